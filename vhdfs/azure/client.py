"""Azure SDK clients for blob locations: retries, timeouts, traffic counts, and errors.

Everything that talks to blob storage gets its client here, so that every request
  - is retried with capped exponential backoff on timeouts, dropped connections and 5xx
    (the SDK's storage retry rules: 408 and 5xx except 501/505), and fails at once on
    other 4xx (403, 404, 409, 412: retrying cannot help);
  - is counted in `vhdfs.azure.stats.TRANSFER` (for --stats and the benchmarks);
  - turns any SDK failure into one `RemoteError` line with the secrets scrubbed out.

Tuning (environment): VHDFS_BLOB_RETRIES (default 6), VHDFS_BLOB_BACKOFF (first wait in
seconds, default 0.5; doubles up to 16), VHDFS_BLOB_TIMEOUT (seconds to wait for a response,
default 60).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
from collections.abc import Iterator
from typing import Any

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobClient, ContainerClient
from azure.storage.blob._shared.policies import StorageRetryPolicy
from requests import Session
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from vhdfs.azure.credentials import Credential, credential_for
from vhdfs.azure.location import BlobLocation
from vhdfs.azure.stats import TRANSFER
from vhdfs.errors import RemoteError, VhdfsError
from vhdfs.secrets import scrub

# The SDK logs requests and retries on the "azure" logger; nothing of it reaches the user
# (our own messages say what matters, scrubbed).
logging.getLogger("azure").addHandler(logging.NullHandler())
logging.getLogger("azure").propagate = False

MAX_PAGE_WRITE = 4 * 1024 * 1024  # Azure's limit for one Put Page request
MAX_GET_BODY = 4 * 1024 * 1024  # the largest ranged GET vhdfs makes
CONNECT_TIMEOUT = 10
POOL_SIZE = 64


def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise VhdfsError(f"{name}={text!r} is not a number") from None
    if value < 0:
        raise VhdfsError(f"{name}={text!r} must not be negative")
    return value


class BackoffRetry(StorageRetryPolicy):
    """The SDK's storage retry rules with a short, capped exponential backoff and jitter."""

    def __init__(self, retries: int, first_wait: float, cap: float = 16.0) -> None:
        super().__init__(retry_total=retries, retry_connect=retries, retry_read=retries,
                         retry_status=retries)
        self.first_wait = first_wait
        self.cap = cap

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        wait = min(self.cap, self.first_wait * (2 ** settings["count"]))
        return wait * random.uniform(0.8, 1.2)

    def sleep(self, settings: dict[str, Any], transport: Any) -> None:
        TRANSFER.add_retry()
        super().sleep(settings, transport)


class CountingTransport(RequestsTransport):
    """The requests transport, counting every attempt's request and response bodies."""

    def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        length = request.headers.get("Content-Length")
        body = request.body if isinstance(request.body, (bytes, bytearray, memoryview)) else None
        size = int(length) if length else (len(body) if body is not None else 0)
        if size > MAX_PAGE_WRITE + 64 * 1024 and request.method == "PUT" and "comp=page" in \
                request.url:
            # Our planner never makes such a request; refuse rather than break Azure's rule.
            raise RemoteError(f"internal: a page write of {size} bytes exceeds 4 MiB")
        TRANSFER.add_request(size)
        response = super().send(request, **kwargs)
        if request.method != "HEAD":
            fetched = response.headers.get("Content-Length")
            if fetched and fetched.isdigit():
                TRANSFER.add_fetched(int(fetched))
        return response


_transport: CountingTransport | None = None
_transport_lock = threading.Lock()


# Proxies and their exceptions: requests reads these from the environment when `trust_env`
# is on, and with it ~/.netrc (no Azure endpoint uses it), all again for every request.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def _proxies_configured() -> bool:
    return any(name.lower() in PROXY_VARIABLES for name in os.environ)


def _ca_bundle() -> str | bool:
    """The CA bundle requests would take from the environment (True: its default)."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


def _new_session() -> Session:
    session = Session()
    # Without proxies to honour, reading the environment (and ~/.netrc) for every request
    # was a third of the CPU a ranged GET costs us; the CA bundle is passed on explicitly.
    session.trust_env = _proxies_configured()
    adapter = HTTPAdapter(pool_connections=8, pool_maxsize=POOL_SIZE,
                          max_retries=Retry(total=False, redirect=False, raise_on_status=False))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def shared_transport() -> CountingTransport:
    """One connection pool for the process, large enough for parallel uploads and reads."""
    global _transport
    with _transport_lock:
        if _transport is None:
            _transport = CountingTransport(
                session=_new_session(), session_owner=False, connection_timeout=CONNECT_TIMEOUT,
                read_timeout=_env_number("VHDFS_BLOB_TIMEOUT", 60), connection_verify=_ca_bundle(),
                # A response body is read in pieces of this size: the default (4 KiB) cost
                # 1,024 trips through four layers of Python per 4 MiB GET, more CPU than
                # everything else of a remote read together.
                connection_data_block_size=MAX_GET_BODY)
        return _transport


def _after_fork_in_child() -> None:
    """`vhdfs mount` opens the chain, then forks its daemon: the child must not share the
    parent's connections (nor locks some thread held at the fork)."""
    global _transport_lock
    _transport_lock = threading.Lock()
    if _transport is not None:
        _transport.session = _new_session()  # clients keep this transport object


os.register_at_fork(after_in_child=_after_fork_in_child)


def _client_options() -> dict[str, Any]:
    retries = int(_env_number("VHDFS_BLOB_RETRIES", 6))
    return {
        "transport": shared_transport(),
        "retry_policy": BackoffRetry(retries, _env_number("VHDFS_BLOB_BACKOFF", 0.5)),
        "connection_timeout": CONNECT_TIMEOUT,
        "read_timeout": _env_number("VHDFS_BLOB_TIMEOUT", 60),
        "max_single_get_size": 32 * 1024 * 1024,
        "max_chunk_get_size": 4 * 1024 * 1024,
        "max_page_size": MAX_PAGE_WRITE,
        "logging_enable": False,
    }


def _endpoint_and_credential(loc: BlobLocation, credential: Credential | None) -> tuple[str, Any]:
    """The account URL and the credential to build a client with. A SAS (the URL's own, or
    the environment's) goes into the account URL's query, where the SDK keeps the SAS fields
    and drops anything else a user's URL may carry: given as the credential, a SAS with one
    unknown field is not taken for a SAS at all, and every request goes out unsigned."""
    cred = credential or credential_for(loc)
    value = cred.value if cred.value is not None else (loc.sas or None)
    if isinstance(value, str):
        return f"{loc.account_url}?{value.lstrip('?')}", None
    return loc.account_url, value


def blob_client(loc: BlobLocation, credential: Credential | None = None) -> BlobClient:
    url, value = _endpoint_and_credential(loc, credential)
    return BlobClient(url, loc.container, loc.blob, credential=value, **_client_options())


def container_client(loc: BlobLocation, credential: Credential | None = None) -> ContainerClient:
    url, value = _endpoint_and_credential(loc, credential)
    return ContainerClient(url, loc.container, credential=value, **_client_options())


def error_code(exc: HttpResponseError) -> str:
    # azure-core sets error_code only when the answer carried one (no attribute otherwise);
    # it is the SDK's ErrorCode enum or a bare string.
    code = getattr(exc, "error_code", None) or ""
    return str(getattr(code, "value", code))


def _server_message(exc: HttpResponseError) -> str:
    text = exc.reason or ""
    message = str(exc.message or "")
    first = message.splitlines()[0].strip() if message else ""
    if first and not first.startswith("Operation returned an invalid status"):
        text = first
    return text


def describe_http_error(exc: HttpResponseError, name: str, action: str) -> str:
    status = exc.status_code or 0
    code = error_code(exc)
    tag = f"HTTP {status}{' ' + code if code else ''}"
    server = _server_message(exc)
    said = f" ({server})" if server and code not in server else ""
    if status == 403 or status == 401:
        return (f"{name}: access denied while {action} ({tag}){said}: the credential does not "
                "allow it or has expired; check AZURE_STORAGE_CONNECTION_STRING / "
                "AZURE_STORAGE_KEY, or the SAS's permissions (read: r; upload: r, c, w) and "
                "expiry")
    if status == 404:
        what = {"ContainerNotFound": "the container does not exist",
                "BlobNotFound": "no such blob"}.get(code, "not found")
        fix = "create the container first" if code == "ContainerNotFound" else \
            "check the account, container and blob name"
        return f"{name}: {what} while {action} ({tag}); {fix}"
    if status == 409 and code == "LeaseAlreadyPresent":
        return (f"{name}: another upload holds the lease on this blob ({tag}); wait for it to "
                "finish (a stopped upload's lease expires within a minute; then use --resume)")
    if status == 412 and code in ("LeaseIdMissing", "LeaseNotPresentWithBlobOperation",
                                  "LeaseIdMismatchWithBlobOperation", "LeaseLost"):
        return (f"{name}: the blob is leased by another upload, or our lease was lost, while "
                f"{action} ({tag}); wait for the other upload to finish")
    if status == 412:
        return (f"{name}: the blob changed while {action} ({tag}); someone else wrote to it; "
                "run the command again")
    if status == 409:
        return f"{name}: conflict while {action} ({tag}){said}"
    if status >= 500:
        return (f"{name}: the storage service failed while {action} ({tag}){said}, also after "
                "retries; try again later")
    return f"{name}: request failed while {action} ({tag}){said}"


def translate(exc: BaseException, name: str, action: str,
              secrets: tuple[str, ...] = ()) -> RemoteError:
    """One RemoteError line for any SDK or network failure, with secrets scrubbed."""
    if isinstance(exc, HttpResponseError) and exc.status_code:
        text = describe_http_error(exc, name, action)
    elif isinstance(exc, ClientAuthenticationError) or type(exc).__name__ == \
            "CredentialUnavailableError":
        text = (f"{name}: no usable Azure credential while {action}: set "
                "AZURE_STORAGE_CONNECTION_STRING (or AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY), "
                "give a URL with a SAS, or sign in for azure-identity (az login)")
    elif isinstance(exc, ServiceRequestError):
        text = (f"{name}: cannot connect to the storage endpoint while {action} "
                f"({type(exc).__name__}), also after retries; check the URL and the network")
    elif isinstance(exc, ServiceResponseError):
        text = (f"{name}: no complete answer from the storage endpoint while {action} (timed "
                "out or the connection dropped), also after retries; try again later")
    elif isinstance(exc, AzureError):
        text = f"{name}: blob storage request failed while {action}: {exc}"
    else:
        text = f"{name}: blob storage request failed while {action}: {type(exc).__name__}: {exc}"
    error = RemoteError(scrub(text, secrets))
    error.status = getattr(exc, "status_code", None)  # only an HTTP answer has a status
    error.code = error_code(exc) if isinstance(exc, HttpResponseError) else ""
    return error


@contextlib.contextmanager
def remote_errors(name: str, action: str, secrets: tuple[str, ...] = ()) -> Iterator[None]:
    try:
        yield
    except VhdfsError:
        raise
    except (AzureError, OSError, ValueError) as exc:
        raise translate(exc, name, action, secrets) from None
