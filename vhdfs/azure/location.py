"""Where a page blob lives: parse the blob forms users write.

Accepted forms:
  https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB[?SAS]   (any ACCOUNT.blob.SUFFIX host, and
                                                               ACCOUNT.zNN.blob.storage.azure.net)
  http://127.0.0.1:10000/devstoreaccount1/CONTAINER/BLOB[?SAS] (path style: Azurite, IP hosts)
  az://CONTAINER/BLOB                                          (account from the environment)

Nothing here talks to the network or imports the Azure SDK: the command line parses every
image argument that looks remote through here, and most arguments are local files. Parsing a URL
registers its query string (a SAS) with vhdfs.secrets, so it is masked wherever it appears.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, replace

from vhdfs.errors import UsageError
from vhdfs.secrets import register_query, scrub

SCHEMES = ("https://", "http://", "az://")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def looks_remote(spec: str) -> bool:
    return spec.lower().startswith(SCHEMES)


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return name.lower() in LOOPBACK_HOSTS


def _virtual_host_account(host: str) -> str | None:
    """ACCOUNT of a virtual-host style name (port aside), else None: `ACCOUNT.blob.SUFFIX`
    (core.windows.net, the sovereign clouds, `ACCOUNT.blob.localhost`), and the DNS-zone
    endpoints `ACCOUNT.zNN.blob.storage.azure.net`, which is also where a managed disk's
    upload URL points (`md-impexp-....zNN.blob.storage.azure.net`). IP hosts and plain
    names (Azurite's 127.0.0.1:10000, localhost) are path style."""
    name = host.rsplit(":", 1)[0].lower() if not host.startswith("[") else ""
    labels = name.split(".")
    if not labels[0] or all(label.isdigit() for label in labels):
        return None
    if len(labels) >= 3 and labels[1] == "blob":
        return labels[0]
    if name.endswith(".blob.storage.azure.net"):
        return labels[0]
    return None


def is_managed_disk_host(loc: BlobLocation) -> bool:
    """A managed disk's upload (or download) URL: its account is `md-...`, as AzCopy tells
    them apart; that endpoint takes page writes and reads only (no lease, no metadata, no
    Content-MD5 on writes, no create or delete)."""
    return not loc.path_style and loc.account.lower().startswith("md-")


@dataclass(frozen=True)
class BlobLocation:
    """One blob (or, with blob == "", a container or folder) on one endpoint of one account."""

    scheme: str  # "https" or "http"
    host: str  # host[:port] as written
    account: str
    container: str
    blob: str  # may contain "/" (virtual folders); "" for a container or folder
    path_style: bool  # the account is the first path segment (Azurite, IP hosts)
    sas: str = ""  # the query string of a SAS URL, without "?"
    via_az: bool = False  # written as az://CONTAINER/BLOB

    @property
    def account_url(self) -> str:
        base = f"{self.scheme}://{self.host}"
        return f"{base}/{self.account}" if self.path_style else base

    @property
    def url(self) -> str:
        """The blob's URL without any SAS: safe to show, store and log."""
        path = urllib.parse.quote(f"{self.container}/{self.blob}" if self.blob else self.container)
        return f"{self.account_url}/{path}"

    @property
    def url_with_sas(self) -> str:
        return f"{self.url}?{self.sas}" if self.sas else self.url

    @property
    def display(self) -> str:
        """How messages name the blob: the form the user wrote, never with a SAS."""
        if self.via_az:
            return f"az://{self.container}/{self.blob}" if self.blob else f"az://{self.container}"
        return self.url

    @property
    def endpoint(self) -> tuple[str, str, str]:
        """What credentials are bound to: scheme, host (with port) and account."""
        return (self.scheme, self.host.lower(), self.account.lower())

    def identity(self) -> tuple:
        return ("blob",) + self.endpoint + (self.container, self.blob)

    def same_account(self, other: BlobLocation) -> bool:
        return self.endpoint == other.endpoint

    def folder(self) -> str:
        """The blob's virtual folder inside its container ("" or "a/b/")."""
        return self.blob.rsplit("/", 1)[0] + "/" if "/" in self.blob else ""

    def sibling(self, blob: str, container: str | None = None) -> BlobLocation:
        """Another blob of the same account, reached with the same credentials (and SAS)."""
        return replace(self, blob=blob, container=container or self.container)

    def without_sas(self) -> BlobLocation:
        return replace(self, sas="")

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def parse_blob_url(spec: str, *, want_blob: bool = True) -> BlobLocation:
    """An http(s) URL of a blob (or of a container or folder when not `want_blob`)."""
    parts = urllib.parse.urlsplit(spec)
    register_query(parts.query)  # before any message can quote it
    scheme = parts.scheme.lower()
    host = parts.netloc
    shown = scrub(spec)
    if "@" in host:
        raise UsageError(f"{shown}: user names or passwords in blob URLs are not supported; give "
                         "a SAS in the query or set AZURE_STORAGE_CONNECTION_STRING")
    if not host:
        raise UsageError(f"{shown}: no host in the blob URL")
    segments = [urllib.parse.unquote(s) for s in parts.path.split("/")[1:]]
    account = _virtual_host_account(host)
    path_style = account is None
    if path_style:
        if not segments or not segments[0]:
            raise UsageError(f"{shown}: expected http(s)://HOST/ACCOUNT/CONTAINER/BLOB (path "
                             "style, as Azurite serves) or https://ACCOUNT.blob.core.windows.net/"
                             "CONTAINER/BLOB")
        account, segments = segments[0], segments[1:]
    container = segments[0] if segments else ""
    blob = "/".join(segments[1:])
    if not container or (want_blob and (not blob or blob.endswith("/"))):
        form = "CONTAINER/BLOB" if want_blob else "CONTAINER[/FOLDER]"
        raise UsageError(f"{shown}: no {'blob name' if container else 'container'} in the URL; "
                         f"expected .../{form}")
    return BlobLocation(scheme=scheme, host=host, account=account, container=container,
                        blob=blob, path_style=path_style, sas=parts.query)


def split_az(spec: str, *, want_blob: bool = True) -> tuple[str, str]:
    """CONTAINER and BLOB of `az://CONTAINER/BLOB`."""
    rest = spec[len("az://"):]
    container, _, blob = rest.partition("/")
    if not container or (want_blob and (not blob or blob.endswith("/"))):
        raise UsageError(f"{spec}: expected az://CONTAINER/BLOB (the account comes from "
                         "AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT)")
    if "?" in blob:
        register_query(blob.partition("?")[2])
        raise UsageError(f"{scrub(spec)}: az:// names take no query; put a SAS in "
                         "AZURE_STORAGE_SAS_TOKEN or use the https:// URL")
    return container, blob
