"""No secret anywhere: every command, with a SAS URL and with connection strings, through
success and through provoked failures (a missing blob, 403s, Azurite stopped), and no SAS
signature, marker parameter or account key appears in any standard output or error, --json,
the mount's log file, the mount point's extended attributes, blob metadata, or the files
the commands write.

The SAS tokens are real (generated with Azurite's well-known key; Azurite checks them), so
the test would catch a leak of a real signature; each also carries an extra parameter whose
value is a marker. The connection strings carry a real account SAS (signature plus marker),
Azurite's real key, or a key that decodes fine and holds a marker (every request then gets
Azurite's own 403).
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.azure.azurite import (
    ACCOUNT,
    KEY,
    Azurite,
    FaultProxy,
    azurite_binary,
    connection_string,
)
from tests.azure.conftest import FAST_RETRIES
from tests.azure.helpers import MiB, make_chain, service
from tests.tooling import force_unmount, need
from vhdfs.create import create_differencing, parent_info_of
from vhdfs.resolve import OpenOptions, open_chain
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.footer import format_unique_id
from vhdfs.vhd.layer import Layer

GUEST_FILE = b"hello from the guest file system\n" * 64
MARKER_KEY = base64.b64encode(b"MARKERKEY-" + random.Random(7).randbytes(54)).decode()


@dataclass
class Form:
    """One way of handing vhdfs a credential, and the secrets that must never show."""

    name: str
    env: dict[str, str]
    spec: Callable[[str], str]  # blob name -> what the user types
    secrets: list[str]
    parent_option: list[str] = field(default_factory=list)  # to reopen a local child


def sas_secrets(sas: str) -> list[str]:
    """The signature (as in the URL and decoded, whole and its first 16 characters), the
    marker value and the whole query string."""
    fields = dict(urllib.parse.parse_qsl(sas))
    raw_sig = next(v for k, v in (p.split("=", 1) for p in sas.split("&")) if k == "sig")
    return [sas, raw_sig, fields["sig"], fields["sig"][:16], fields["vhdfsmarker"]]


@dataclass
class World:
    azurite: Azurite
    proxy: FaultProxy
    container: str
    folder: Path
    base: Path
    child: Path
    hello_at: int  # where /hello.txt's data is on the disk
    forms: dict[str, Form]
    runs: int = 0

    def vhdfs(self, form: Form, *args: object, cwd: Path | None = None,
              expect: str = "ok") -> subprocess.CompletedProcess:
        """`vhdfs ARGS` with the form's environment, its output checked for every secret."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_STORAGE")}
        env.update(FAST_RETRIES)
        env.update(form.env)
        done = subprocess.run([sys.executable, "-m", "vhdfs", *map(str, args)], env=env,
                              capture_output=True, text=True, timeout=300, cwd=cwd)
        self.runs += 1
        what = f"vhdfs {' '.join(map(str, args))} [{form.name}]"
        no_secret(f"{what}: stdout", done.stdout, self.all_secrets)
        no_secret(f"{what}: stderr", done.stderr, self.all_secrets)
        assert done.returncode != 70, f"{what}: internal error: {done.stderr}"
        if expect == "ok":
            assert done.returncode in (0, 1), f"{what}: {done.stdout}{done.stderr}"
        elif expect == "fail":
            assert done.returncode != 0, f"{what} succeeded: {done.stdout}"
        return done

    @property
    def all_secrets(self) -> list[str]:
        secrets = [KEY, KEY[:16], MARKER_KEY, MARKER_KEY[:16], "MARKERKEY"]
        return secrets + [s for form in self.forms.values() for s in form.secrets]

    def metadata_is_clean(self) -> None:
        blobs = service(self.azurite.endpoint).get_container_client(self.container)
        for blob in blobs.list_blobs(include=["metadata"]):
            for key, value in (blob.metadata or {}).items():
                no_secret(f"metadata {key} of {blob.name}", f"{key}={value}", self.all_secrets)
                no_secret(f"metadata {key} of {blob.name} (decoded)",
                          urllib.parse.unquote(value), self.all_secrets)


def no_secret(where: str, text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, f"{where} holds a secret ({secret[:6]}...):\n{text}"


def files_are_clean(folder: Path, secrets: list[str]) -> None:
    """What commands wrote (images with locators, copies, logs) holds no secret either."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, f"{path} holds a secret ({secret[:6]}...)"


def ext4_chain(folder: Path) -> tuple[Path, Path, int]:
    """base.vhd: an ext4 volume holding /hello.txt; child.vhd changes that file's data, at
    the offset returned."""
    need("mkfs.ext4")
    staging = folder / "staging"
    staging.mkdir()
    (staging / "hello.txt").write_bytes(GUEST_FILE)
    raw = folder / "base.raw"
    with open(raw, "wb") as out:
        out.truncate(32 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-t", "ext4", "-b", "4096", "-L", "data", "-E",
                    "root_owner=0:0", "-d", str(staging), str(raw)], check=True,
                   capture_output=True)
    shutil.rmtree(staging)
    base, child = folder / "base.vhd", folder / "child.vhd"
    assert subprocess.run([sys.executable, "-m", "vhdfs", "-q", "convert", str(raw), str(base),
                           "--to", "dynamic"], capture_output=True).returncode == 0
    at = raw.read_bytes().find(GUEST_FILE[:4096])
    raw.unlink()
    with Layer(LocalFile(base)) as layer:
        create_differencing(child, parent_info_of(base, layer))
    with open_chain(str(child), OpenOptions(), writable=True) as chain:
        chain.write(at, b"HELLO".ljust(512, b"!"))
    return base, child, at


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from azure.storage.blob import (
        AccountSasPermissions,
        ContainerSasPermissions,
        ResourceTypes,
        generate_account_sas,
        generate_container_sas,
    )

    binary = azurite_binary()
    if binary is None:
        pytest.skip("Azurite is not installed: run scripts/setup (or point VHDFS_AZURITE at it)")
    folder = tmp_path_factory.mktemp("secrets")
    base, child, hello_at = ext4_chain(folder)
    expiry = datetime.now(UTC) + timedelta(hours=2)
    with Azurite(binary, folder / "azurite-data") as azurite:  # on disk: it is stopped later
        container = f"s{uuid.uuid4().hex[:20]}"
        service(azurite.endpoint).create_container(container)
        proxy = FaultProxy(azurite.port)  # every request passes it: 403s are injected there
        try:
            container_sas = generate_container_sas(
                ACCOUNT, container, account_key=KEY, expiry=expiry,
                permission=ContainerSasPermissions(read=True, write=True, create=True,
                                                   add=True, delete=True, list=True))
            container_sas += "&vhdfsmarker=MARKERSASURL0123456789"
            account_sas = generate_account_sas(
                ACCOUNT, KEY, ResourceTypes(service=True, container=True, object=True),
                AccountSasPermissions(read=True, write=True, create=True, add=True,
                                      delete=True, list=True), expiry)
            account_sas += "&vhdfsmarker=MARKERCONNSTR0123456789"
            endpoint = proxy.endpoint

            def url(name: str) -> str:
                return f"{endpoint}/{container}/{name}?{container_sas}"

            def az(name: str) -> str:
                return f"az://{container}/{name}"

            forms = {
                "sas-url": Form("sas-url", {}, url, sas_secrets(container_sas)),
                "conn-sas": Form("conn-sas", {"AZURE_STORAGE_CONNECTION_STRING":
                                              f"BlobEndpoint={endpoint};"
                                              f"SharedAccessSignature={account_sas}"},
                                 az, sas_secrets(account_sas)),
                "conn-key": Form("conn-key", {"AZURE_STORAGE_CONNECTION_STRING":
                                              f"DefaultEndpointsProtocol=http;AccountName="
                                              f"{ACCOUNT};AccountKey={KEY};BlobEndpoint="
                                              f"{endpoint}"}, az, [KEY, KEY[:16]]),
                "conn-marker-key": Form("conn-marker-key", {"AZURE_STORAGE_CONNECTION_STRING":
                                                            f"AccountName={ACCOUNT};AccountKey="
                                                            f"{MARKER_KEY};BlobEndpoint="
                                                            f"{endpoint}"}, az,
                                        [MARKER_KEY, MARKER_KEY[:16], "MARKERKEY"]),
            }
            yield World(azurite, proxy, container, folder, base, child, hello_at, forms)
        finally:
            proxy.close()


def mount_and_read(world: World, form: Form, image: str, work: Path) -> None:
    """mount (with --log), the mount point's xattrs, a read, a read the proxy denies (the
    daemon logs it), umount."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: FUSE mounts cannot run on this machine")
    mnt, log = work / "mnt", work / "mount.log"
    mnt.mkdir()
    world.vhdfs(form, "mount", image, mnt, "--log", log)
    try:
        for name in os.listxattr(mnt):
            value = os.getxattr(mnt, name).decode(errors="replace")
            no_secret(f"xattr {name} of the mount point", f"{name}={value}", world.all_secrets)
        with open(mnt / "disk.raw", "rb") as disk:
            assert len(disk.read(4096)) == 4096
            rule = world.proxy.add("status", -1, method="GET", status=403)
            try:
                disk.seek(world.hello_at)
                with pytest.raises(OSError):
                    disk.read(4096)  # data not read before: the proxy answers 403, EIO here
            finally:
                world.proxy.rules.remove(rule)
    finally:
        done = world.vhdfs(form, "umount", mnt, expect="any")
        if done.returncode:
            force_unmount(mnt)
    text = log.read_text(errors="replace")
    assert "403" in text or "access denied" in text, text  # the failure was logged...
    no_secret("the mount's log file", text, world.all_secrets)  # ...without a secret


@pytest.mark.parametrize("form_name", ["sas-url", "conn-sas", "conn-key"])
def test_every_command_succeeds_without_showing_a_secret(world: World, form_name: str) -> None:
    form = world.forms[form_name]
    work = world.folder / form_name
    work.mkdir()
    base, child = f"{form_name}/base.vhd", f"{form_name}/child.vhd"
    run = world.vhdfs
    run(form, "upload", world.base, form.spec(base))
    run(form, "upload", world.child, form.spec(child), "--as-is")
    run(form, "set-parent", form.spec(child), form.spec(base))
    image = form.spec(child)
    for args in (["info"], ["info", "--json"], ["check"], ["check", "--json"], ["verify"],
                 ["verify", "--json"], ["volumes"], ["volumes", "--json"], ["ls", "/"],
                 ["ls", "/", "-l"], ["ls", "/", "--json"]):
        run(form, args[0], image, *args[1:])
    changes = run(form, "changes", image)
    assert "M  /hello.txt" in changes.stdout
    run(form, "changes", image, "--json")
    assert run(form, "cat", image, "/hello.txt").stdout.startswith("HELLO!!!")
    run(form, "get", image, "/hello.txt", work / "hello.txt")
    run(form, "convert", image, work / "flat.raw", "--to", "raw")
    run(form, "upload", image, form.spec(f"{form_name}/copy.vhd"), "--verify")  # blob to blob
    # Azurite (3.x) shares pages between a server-side copy and its source: writing the
    # copy writes the source too. The patch goes over a base of its own, so that the chain
    # the other commands read stays intact.
    run(form, "upload", world.base, form.spec(f"{form_name}/patch-base.vhd"))
    run(form, "upload", world.child, form.spec(f"{form_name}/patched.vhd"), "--patch-base",
        form.spec(f"{form_name}/patch-base.vhd"))
    made = run(form, "create", work / "local.vhd", "--parent", form.spec(base))
    assert "at http://" in made.stdout  # the blob's URL, never its SAS
    # A local child over the blob: its locator names the URL without query; reopened with
    # the environment's credential, or with --parent when the credential is the URL's SAS.
    again = ["--parent", form.spec(base)] if form_name == "sas-url" else []
    info = run(form, "info", work / "local.vhd", *again)
    assert "parent found" in info.stdout
    run(form, "check", work / "local.vhd", "--json", *again)
    mount_and_read(world, form, image, work)
    world.metadata_is_clean()
    files_are_clean(work, world.all_secrets)
    copied = service(world.azurite.endpoint).get_blob_client(
        world.container, f"{form_name}/copy.vhd").get_blob_properties().metadata
    assert urllib.parse.unquote(copied["vhdfs_source"]).endswith(f"/{child}")  # URL, no query


def failing_commands(world: World, form: Form, name: str, work: Path) -> Iterator[list]:
    image = form.spec(name)
    other = form.spec(f"{form.name}/other-{uuid.uuid4().hex[:8]}.vhd")
    yield ["info", image]
    yield ["info", image, "--json"]
    yield ["check", image]
    yield ["check", image, "--json"]
    yield ["verify", image]
    yield ["verify", image, "--json"]
    yield ["changes", image]
    yield ["changes", image, "--json"]
    yield ["ls", image, "/"]
    yield ["cat", image, "/hello.txt"]
    yield ["get", image, "/hello.txt", work / "got.txt"]
    yield ["volumes", image]
    yield ["convert", image, work / "flat.raw", "--to", "raw"]
    yield ["upload", image, other]  # blob to blob
    yield ["upload", world.child, other, "--patch-base", image]
    yield ["set-parent", image, form.spec(f"{form.name}/base.vhd")]
    yield ["create", work / "new.vhd", "--parent", image]
    # The local child's own base is next to it: the blob is tried first, then that (exit 0);
    # with a deeper search the failed --parent SPEC is listed among the places tried.
    yield ["info", world.child, "--parent", image, "--search", work]
    if os.path.exists("/dev/fuse"):
        (work / "mnt").mkdir(exist_ok=True)
        yield ["mount", image, work / "mnt", "--log", work / "mount.log"]


def run_failures(world: World, form: Form, name: str, label: str,
                 upload_fails: bool) -> None:
    work = world.folder / f"{form.name}-{label}"
    work.mkdir()
    for args in failing_commands(world, form, name, work):
        world.vhdfs(form, *args, expect="any" if args[1] == world.child else "fail")
    if upload_fails:  # an upload of a local disk to a blob
        world.vhdfs(form, "upload", world.child, form.spec(f"{form.name}/up-{label}.vhd"),
                    expect="fail")
    assert not os.path.ismount(work / "mnt")
    files_are_clean(work, world.all_secrets)


@pytest.mark.parametrize("form_name", ["sas-url", "conn-sas"])
def test_a_missing_blob_fails_without_showing_a_secret(world: World, form_name: str) -> None:
    run_failures(world, world.forms[form_name], f"{form_name}/no-such-blob.vhd", "missing",
                 upload_fails=False)
    world.metadata_is_clean()


@pytest.mark.parametrize("form_name", ["sas-url", "conn-sas", "conn-key"])
def test_403s_fail_without_showing_a_secret(world: World, form_name: str) -> None:
    rule = world.proxy.add("status", -1, status=403)
    try:
        run_failures(world, world.forms[form_name], f"{form_name}/child.vhd", "denied",
                     upload_fails=True)
    finally:
        world.proxy.rules.remove(rule)


def test_a_key_azurite_refuses_is_never_shown(world: World) -> None:
    """The key decodes fine, so every request is signed with it; Azurite answers 403."""
    run_failures(world, world.forms["conn-marker-key"], "sas-url/child.vhd", "bad-key",
                 upload_fails=True)


@pytest.mark.parametrize("form_name", ["sas-url", "conn-sas", "conn-key"])
def test_azurite_stopped_fails_without_showing_a_secret(world: World, form_name: str) -> None:
    world.azurite.stop()
    try:
        run_failures(world, world.forms[form_name], f"{form_name}/child.vhd", "stopped",
                     upload_fails=True)
    finally:
        world.azurite.start()  # the same port and data


def test_the_secret_checks_would_catch_a_leak(world: World) -> None:
    """The checker is not blind: a SAS URL printed as it is, and a key in a message, are
    caught (the same strings the commands above were given)."""
    form = world.forms["sas-url"]
    leaky = form.spec("x/y.vhd")
    with pytest.raises(AssertionError, match="holds a secret"):
        no_secret("a leaky line", f"error: {leaky}: not found", world.all_secrets)
    with pytest.raises(AssertionError, match="holds a secret"):
        no_secret("a decoded signature", urllib.parse.unquote(leaky), world.all_secrets)
    with pytest.raises(AssertionError, match="holds a secret"):
        no_secret("a key", f"AccountKey {KEY}", world.all_secrets)
    # ...and a real run prints the URL it was given, only without the query.
    done = world.vhdfs(form, "info", form.spec("sas-url/none.vhd"), expect="fail")
    assert f"{form.spec('sas-url/none.vhd').split('?')[0]}:" in done.stderr


def test_create_over_a_blob_records_its_url_and_follows_it_only_to_its_account(
        tmp_path: Path, env: dict, container: str, proxy: FaultProxy) -> None:
    """`create --parent` over a blob (exit 70 before): the child records the blob's URL
    without query, and later commands follow it with the environment's credential, but only
    to the account the environment names; elsewhere it is not fetched, in one line."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    base, _ = make_chain(tmp_path)
    through = dict(env, AZURE_STORAGE_CONNECTION_STRING=connection_string(proxy.endpoint))
    done = subprocess.run([sys.executable, "-m", "vhdfs", "upload", str(base),
                           f"az://{container}/bases/base.vhd"], env=through,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    sas = generate_container_sas(ACCOUNT, container, account_key=KEY,
                                 permission=ContainerSasPermissions(read=True),
                                 expiry=datetime.now(UTC) + timedelta(hours=1))
    url = f"{proxy.endpoint}/{container}/bases/base.vhd"
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    child = folder / "child.vhd"

    def vhdfs(*args: object, environ: dict) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vhdfs", *map(str, args)], env=environ,
                              capture_output=True, text=True, timeout=120)

    no_account = {k: v for k, v in env.items() if not k.startswith("AZURE_STORAGE")}
    made = vhdfs("create", child, "--parent", f"{url}?{sas}", environ=no_account)
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip().endswith(f"parent base.vhd at {url} ({base_id(base)})")
    data = child.read_bytes()
    assert url.encode() in data and b"sig=" not in data and sas.encode() not in data

    info = vhdfs("info", child, "--json", environ=through)  # no --parent
    assert info.returncode == 0, info.stderr
    top = json.loads(info.stdout)["layers"][0]
    assert (top["parent_found"]["path"], top["parent_found"]["by"]) == (url, "MacX")
    assert [loc["path"] for loc in top["locators"]] == [url]

    proxy.clear()
    other = dict(no_account, AZURE_STORAGE_ACCOUNT="otheraccount",
                 AZURE_STORAGE_KEY=base64.b64encode(b"another account's key").decode())
    for environ in (no_account, other):
        refused = vhdfs("info", child, environ=environ)
        assert refused.returncode == 4, refused.stderr
        assert refused.stderr.count("\n") == 1 and "only fetched on the account" in \
            refused.stderr
    assert proxy.requests() == []  # never sent a request, let alone a key
    again = vhdfs("info", child, "--parent", f"{url}?{sas}", environ=no_account)
    assert again.returncode == 0 and sas not in again.stdout + again.stderr


def base_id(path: Path) -> str:
    with Layer(LocalFile(path)) as layer:
        return format_unique_id(layer.unique_id)
