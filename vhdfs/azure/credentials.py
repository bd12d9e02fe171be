"""Which account `az://` means, and which credential a blob URL may be sent with.

Credentials come from the environment, never from the command line:
  AZURE_STORAGE_CONNECTION_STRING          (AccountName/AccountKey, BlobEndpoint,
                                            SharedAccessSignature, UseDevelopmentStorage=true)
  AZURE_STORAGE_ACCOUNT + AZURE_STORAGE_KEY (or AZURE_STORAGE_SAS_TOKEN), as the az CLI reads them
  azure-identity's DefaultAzureCredential  (https Azure hosts only, when nothing else applies)

A credential is bound to one endpoint: scheme, host with port, and account. A blob on any other
endpoint (a parent linked on another account, a URL on another host) gets only what its own URL
carries (a SAS) or what the environment says about that endpoint; it never receives another
account's key or SAS. An account key is never sent over plain http except to a loopback host
(the emulator).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from vhdfs.azure.location import BlobLocation, is_loopback, parse_blob_url, split_az
from vhdfs.errors import RemoteError, UsageError
from vhdfs.secrets import register, register_query

CONNECTION_STRING_VAR = "AZURE_STORAGE_CONNECTION_STRING"
ACCOUNT_VARS = ("AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_ACCOUNT_NAME")
KEY_VARS = ("AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_ACCOUNT_KEY")
SAS_VAR = "AZURE_STORAGE_SAS_TOKEN"
# Azurite's documented development account (public, the same in every emulator).
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
           "KBHBeksoGMGw==")
DEV_ENDPOINT = "http://127.0.0.1:10000/devstoreaccount1"
AZURE_BLOB_SUFFIXES = (".blob.core.windows.net", ".blob.core.chinacloudapi.cn",
                       ".blob.core.usgovcloudapi.net", ".blob.storage.azure.net")


@dataclass(frozen=True)
class EnvAccount:
    """The account the environment describes, with the endpoint its credential is bound to."""

    endpoint: BlobLocation  # container and blob empty
    key: str = ""
    sas: str = ""
    source: str = CONNECTION_STRING_VAR  # which variable(s) said so, for messages

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.key, self.sas) if s)

    def matches(self, loc: BlobLocation) -> bool:
        return self.endpoint.endpoint == loc.endpoint


def parse_connection_string(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise UsageError(f"{CONNECTION_STRING_VAR}: a part has no '=' (expected "
                             "Name=value;Name=value, e.g. AccountName=...;AccountKey=...)")
        fields[name.strip().lower()] = value.strip()
    return fields


def _endpoint(url: str, account: str, where: str) -> BlobLocation:
    """An account endpoint URL (no container) as a BlobLocation with empty container/blob."""
    probe = url.rstrip("/") + "/c/b"
    try:
        loc = parse_blob_url(probe)
    except UsageError:
        raise UsageError(f"{where}: BlobEndpoint {url!r} is not an http(s) URL of a blob "
                         "endpoint") from None
    if account and loc.account.lower() != account.lower() and not loc.path_style:
        raise UsageError(f"{where}: AccountName {account} does not match BlobEndpoint host "
                         f"{loc.host}")
    return BlobLocation(scheme=loc.scheme, host=loc.host, account=loc.account, container="",
                        blob="", path_style=loc.path_style)


def account_from_connection_string(text: str) -> EnvAccount:
    fields = parse_connection_string(text)
    where = CONNECTION_STRING_VAR
    # Masked from here on, wherever they appear (vhdfs.secrets), even out of their string.
    register(fields.get("accountkey", ""))
    register_query(fields.get("sharedaccesssignature", ""))
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        proxy = fields.get("developmentstorageproxyuri")
        url = DEV_ENDPOINT if not proxy else proxy.rstrip("/") + ":10000/" + DEV_ACCOUNT
        register(DEV_KEY)  # public, but a key all the same: never shown
        return EnvAccount(_endpoint(url, DEV_ACCOUNT, where), key=DEV_KEY)
    account = fields.get("accountname", "")
    key = fields.get("accountkey", "")
    sas = fields.get("sharedaccesssignature", "").lstrip("?")
    if "blobendpoint" in fields:
        endpoint = _endpoint(fields["blobendpoint"], account, where)
        if account and endpoint.path_style and endpoint.account.lower() != account.lower():
            raise UsageError(f"{where}: AccountName {account} does not match the BlobEndpoint "
                             f"path ({endpoint.account})")
    elif account:
        protocol = fields.get("defaultendpointsprotocol", "https").lower()
        suffix = fields.get("endpointsuffix", "core.windows.net")
        endpoint = _endpoint(f"{protocol}://{account}.blob.{suffix}", account, where)
    else:
        raise UsageError(f"{where}: no AccountName or BlobEndpoint in the connection string")
    if not key and not sas:
        raise UsageError(f"{where}: neither AccountKey nor SharedAccessSignature is set")
    return EnvAccount(endpoint, key=key, sas=sas)


def env_account(environ: dict[str, str] | None = None) -> EnvAccount | None:
    env = os.environ if environ is None else environ
    text = env.get(CONNECTION_STRING_VAR, "").strip()
    if text:
        return account_from_connection_string(text)
    account = next((env[v].strip() for v in ACCOUNT_VARS if env.get(v, "").strip()), "")
    if not account:
        return None
    key = next((env[v].strip() for v in KEY_VARS if env.get(v, "").strip()), "")
    sas = env.get(SAS_VAR, "").strip().lstrip("?")
    register(key)
    register_query(sas)
    names = f"{ACCOUNT_VARS[0]}/{KEY_VARS[0] if key else SAS_VAR}"
    endpoint = _endpoint(f"https://{account}.blob.core.windows.net", account, names)
    return EnvAccount(endpoint, key=key, sas=sas, source=names)


def resolve_az(spec: str, *, want_blob: bool = True,
               environ: dict[str, str] | None = None) -> BlobLocation:
    container, blob = split_az(spec, want_blob=want_blob)
    account = env_account(environ)
    if account is None:
        raise UsageError(f"{spec}: az:// needs an account: set {CONNECTION_STRING_VAR} (or "
                         f"{ACCOUNT_VARS[0]} with {KEY_VARS[0]} or {SAS_VAR}; without a key, "
                         "azure-identity's default credential is used), or give the https:// URL")
    base = account.endpoint
    return BlobLocation(scheme=base.scheme, host=base.host, account=base.account,
                        container=container, blob=blob.rstrip("/") if not want_blob else blob,
                        path_style=base.path_style, via_az=True)


def parse_location(spec: str, *, want_blob: bool = True,
                   environ: dict[str, str] | None = None) -> BlobLocation:
    if spec.lower().startswith("az://"):
        return resolve_az(spec, want_blob=want_blob, environ=environ)
    return parse_blob_url(spec, want_blob=want_blob)


def recorded_parent(url: str, environ: dict[str, str] | None = None) -> BlobLocation | None:
    """The blob a URL recorded inside an image names (the MacX locator of a local child
    over a base in blob storage, as `vhdfs create --parent az://...` writes it), when vhdfs
    may fetch it: an http(s) blob URL without query, on the account the environment holds
    a credential for. Any other URL is never fetched: an image must not make vhdfs send
    requests, let alone a credential, to a host of its choosing."""
    if not url.lower().startswith(("https://", "http://")) or "?" in url or "#" in url:
        return None
    try:
        loc = parse_blob_url(url)
        account = env_account(environ)
    except UsageError:
        return None
    if account is None or not account.matches(loc):
        return None
    return loc


def is_azure_host(loc: BlobLocation) -> bool:
    host = loc.host.split(":")[0].lower()
    return loc.scheme == "https" and host.endswith(AZURE_BLOB_SUFFIXES)


@dataclass(frozen=True)
class Credential:
    """What to hand to the SDK for one endpoint, and the strings to scrub from any message."""

    value: Any  # None (anonymous or SAS in the URL), a SAS string, a key dict, a token credential
    secrets: tuple[str, ...] = ()
    kind: str = "anonymous"  # "sas", "key", "token", "anonymous": for messages


def credential_for(loc: BlobLocation, environ: dict[str, str] | None = None) -> Credential:
    """The credential `loc` may be sent with (see the module docstring for the rules)."""
    if loc.sas:
        return Credential(None, (loc.sas,), "sas")  # carried in the URL itself
    account = env_account(environ)
    if account is not None and account.matches(loc):
        if account.key:
            if loc.scheme != "https" and not is_loopback(loc.host):
                raise RemoteError(f"{loc.display}: refusing to send the account key over plain "
                                  f"http to {loc.host}; use an https:// endpoint")
            return Credential({"account_name": loc.account, "account_key": account.key},
                              account.secrets, "key")
        return Credential(account.sas, account.secrets, "sas")
    if is_azure_host(loc):
        return Credential(_default_credential(), (), "token")
    return Credential(None, (), "anonymous")


_default: Any = None


def _default_credential() -> Any:
    """One azure-identity credential per process (it caches its tokens); imported only when
    it can be used: for https Azure hosts that the environment says nothing about."""
    global _default
    if _default is None:
        from azure.identity import DefaultAzureCredential

        _default = DefaultAzureCredential()
    return _default
