"""Blob specs, the account behind az://, which credential goes where, and scrubbed messages.
No server needed."""

from __future__ import annotations

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError

from vhdfs.azure.client import translate
from vhdfs.azure.credentials import (
    DEV_KEY,
    account_from_connection_string,
    credential_for,
    parse_location,
)
from vhdfs.azure.location import parse_blob_url
from vhdfs.errors import RefusedError, RemoteError, UsageError
from vhdfs.resolve import open_chain
from vhdfs.secrets import scrub

KEY = "c2VjcmV0LWtleS1vZi10aGUtdGVzdC1hY2NvdW50LXRoYXQtaXMtbG9uZw=="
AZ = {"AZURE_STORAGE_CONNECTION_STRING":
      f"DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={KEY};"
      "EndpointSuffix=core.windows.net"}
LOCAL = {"AZURE_STORAGE_CONNECTION_STRING":
         f"AccountName=devstoreaccount1;AccountKey={KEY};"
         "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1"}


def test_https_url_with_sas_and_folders() -> None:
    loc = parse_blob_url("https://acme.blob.core.windows.net/vhds/images/my%20disk.vhd"
                         "?sv=2022-11-02&sp=r&sig=abc%2Bdef%3D")
    assert (loc.account, loc.container, loc.blob) == ("acme", "vhds", "images/my disk.vhd")
    assert loc.sas.endswith("sig=abc%2Bdef%3D") and not loc.path_style
    assert loc.folder() == "images/"
    assert loc.url == "https://acme.blob.core.windows.net/vhds/images/my%20disk.vhd"
    assert "sig" not in loc.display
    assert loc.sibling("images/base.vhd").sas == loc.sas  # same account: same SAS


def test_path_style_and_az_forms() -> None:
    loc = parse_blob_url("http://127.0.0.1:10000/devstoreaccount1/c1/d.vhd")
    assert (loc.account, loc.container, loc.blob, loc.path_style) == \
        ("devstoreaccount1", "c1", "d.vhd", True)
    assert loc.account_url == "http://127.0.0.1:10000/devstoreaccount1"
    az = parse_location("az://c1/sub/d.vhd", environ=LOCAL)
    assert az.identity() == loc.sibling("sub/d.vhd").identity()
    assert az.display == "az://c1/sub/d.vhd" and az.via_az
    cloud = parse_location("az://vhds/d.vhd", environ=AZ)
    assert cloud.url == "https://acme.blob.core.windows.net/vhds/d.vhd"
    named = parse_location("az://vhds/d.vhd", environ={"AZURE_STORAGE_ACCOUNT": "acme",
                                                        "AZURE_STORAGE_KEY": KEY})
    assert named.identity() == cloud.identity()


@pytest.mark.parametrize("spec, words", [
    ("https://acme.blob.core.windows.net/vhds", "no blob name"),
    ("https://acme.blob.core.windows.net/", "no container"),
    ("https://user:pw@acme.blob.core.windows.net/c/d.vhd", "user names or passwords"),
    ("http://127.0.0.1:10000/", "expected http(s)://HOST/ACCOUNT/CONTAINER/BLOB"),
    ("az://vhds", "expected az://CONTAINER/BLOB"),
    ("az://vhds/folder/", "expected az://CONTAINER/BLOB"),
])
def test_bad_specs(spec: str, words: str) -> None:
    with pytest.raises(UsageError, match=None) as caught:
        parse_location(spec, environ=LOCAL)
    assert words in str(caught.value)


def test_az_without_an_account_names_the_variables() -> None:
    with pytest.raises(UsageError) as caught:
        parse_location("az://vhds/d.vhd", environ={})
    assert "AZURE_STORAGE_CONNECTION_STRING" in str(caught.value)
    assert "AZURE_STORAGE_ACCOUNT" in str(caught.value)


def test_connection_string_forms() -> None:
    dev = account_from_connection_string("UseDevelopmentStorage=true")
    assert dev.endpoint.account_url == "http://127.0.0.1:10000/devstoreaccount1"
    assert dev.key == DEV_KEY
    sas = account_from_connection_string(
        "BlobEndpoint=https://acme.blob.core.windows.net/;SharedAccessSignature=sv=1&sig=xyz")
    assert sas.endpoint.account == "acme" and sas.sas == "sv=1&sig=xyz" and not sas.key
    with pytest.raises(UsageError, match="neither AccountKey"):
        account_from_connection_string("AccountName=acme")
    with pytest.raises(UsageError, match="no '='"):
        account_from_connection_string("AccountName")


def test_credentials_stay_with_their_endpoint() -> None:
    mine = parse_location("az://c/d.vhd", environ=LOCAL)
    assert credential_for(mine, LOCAL).kind == "key"
    assert credential_for(mine, LOCAL).value["account_key"] == KEY
    # Another port, another account on the same host, another host: nothing of ours.
    for url in ("http://127.0.0.1:10001/devstoreaccount1/c/p.vhd",
                "http://127.0.0.1:10000/otheraccount/c/p.vhd",
                "http://localhost:10000/devstoreaccount1/c/p.vhd"):
        cred = credential_for(parse_blob_url(url), LOCAL)
        assert cred.kind == "anonymous" and cred.value is None and cred.secrets == ()
    # A URL with its own SAS uses it, and only it.
    sas = credential_for(parse_blob_url("http://127.0.0.1:10000/devstoreaccount1/c/p.vhd"
                                        "?sv=1&sig=zzz"), LOCAL)
    assert sas.kind == "sas" and sas.value is None and sas.secrets == ("sv=1&sig=zzz",)
    # An Azure host the environment says nothing about: azure-identity (no key, no SAS);
    # any other host gets nothing.
    assert credential_for(parse_blob_url("https://other.blob.core.windows.net/c/d.vhd"),
                          AZ).kind == "token"
    assert credential_for(parse_blob_url("https://example.org/acct/c/d.vhd"), AZ).kind == \
        "anonymous"
    # Never an account key over plain http to a host that is not this machine.
    remote_http = {"AZURE_STORAGE_CONNECTION_STRING":
                   f"AccountName=acme;AccountKey={KEY};BlobEndpoint=http://10.1.2.3:10000/acme"}
    with pytest.raises(RemoteError, match="plain http"):
        credential_for(parse_location("az://c/d.vhd", environ=remote_http), remote_http)


def test_scrub_removes_every_secret_form() -> None:
    text = (f"GET https://a.blob.core.windows.net/c/d?sv=1&sig=AbC%2Bd%3D&se=2 failed; "
            f"AccountKey={KEY}; Authorization: SharedKey acme:Zm9vYmFy==; Bearer eyJ0eXAi.abc.def; "
            "The MAC signature found in the HTTP request 'QmFyYmF6' is not the same")
    clean = scrub(text, ("supersecretvalue",)) + scrub("x supersecretvalue y", ("supersecretvalue",))
    for secret in ("AbC%2Bd%3D", KEY, "Zm9vYmFy", "eyJ0eXAi", "QmFyYmF6", "supersecretvalue"):
        assert secret not in clean
    # A URL is shown without its query (the whole SAS); a signature outside a URL is masked.
    assert "https://a.blob.core.windows.net/c/d failed" in clean
    assert scrub("token sv=1&sig=AbCdEf12&se=2") == "token sv=1&sig=REDACTED&se=2"


def test_translated_errors_are_one_scrubbed_line() -> None:
    error = HttpResponseError(message=f"Server failed to authenticate sig=SECRETSIG {KEY}")
    error.status_code = 403
    error.error_code = "AuthenticationFailed"
    text = str(translate(error, "az://c/d.vhd", "reading", (KEY,)))
    assert "SECRETSIG" not in text and KEY not in text and "\n" not in text
    assert "access denied while reading (HTTP 403 AuthenticationFailed)" in text
    down = translate(ServiceRequestError("connection refused"), "az://c/d.vhd", "reading")
    assert down.exit_code == 8 and "cannot connect" in str(down)


def test_blobs_open_read_only() -> None:
    with pytest.raises(RefusedError, match="opened read-only"):
        open_chain("http://127.0.0.1:9/devstoreaccount1/c/d.vhd", writable=True)


@pytest.mark.parametrize("url, account, container, blob, managed", [
    # A managed disk's upload URL, as `az disk grant-access --access-level Write` returns it.
    ("https://md-impexp-t0vk4qjq2dqv.z22.blob.storage.azure.net/mbdvvjvmp0rz/abcd"
     "?sv=2018-03-28&sr=b&si=0b2e&sig=c2lnbmF0dXJl", "md-impexp-t0vk4qjq2dqv", "mbdvvjvmp0rz",
     "abcd", True),
    ("https://md-lgbzvxp2kfmx.blob.storage.azure.net/xq0fk3lwd1fc/abcd?sig=x",
     "md-lgbzvxp2kfmx", "xq0fk3lwd1fc", "abcd", True),
    # A storage account behind a DNS-zone endpoint, and the usual forms.
    ("https://acme.z13.blob.storage.azure.net/vhds/d.vhd", "acme", "vhds", "d.vhd", False),
    ("https://acme.blob.core.usgovcloudapi.net/vhds/d.vhd", "acme", "vhds", "d.vhd", False),
    ("http://devstoreaccount1.blob.localhost:10000/c/d.vhd", "devstoreaccount1", "c", "d.vhd",
     False),
])
def test_virtual_host_forms(url: str, account: str, container: str, blob: str,
                            managed: bool) -> None:
    from vhdfs.azure.location import is_managed_disk_host

    loc = parse_blob_url(url)
    assert (loc.account, loc.container, loc.blob, loc.path_style) == \
        (account, container, blob, False)
    assert is_managed_disk_host(loc) == managed
    assert "sig" not in loc.display


@pytest.mark.parametrize("url", ["http://127.0.0.1:10000/md-acct/c/d.vhd",
                                 "http://localhost:10000/devstoreaccount1/c/d.vhd",
                                 "http://[::1]:10000/devstoreaccount1/c/d.vhd"])
def test_ip_hosts_and_plain_names_stay_path_style(url: str) -> None:
    from vhdfs.azure.location import is_managed_disk_host

    loc = parse_blob_url(url)
    assert loc.path_style and loc.container == "c" and loc.blob == "d.vhd"
    assert not is_managed_disk_host(loc)  # an emulator account named md-... is no disk
