"""A blob lease held for the whole of a long job, renewed in the background.

A short lease (15 s, Azure's minimum) renewed every 5 s: a second uploader fails at once,
and the lease of an uploader that died expires quickly, so --resume can go on after it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from azure.core.exceptions import HttpResponseError

from vhdfs.azure.client import error_code, remote_errors, translate
from vhdfs.errors import RemoteError

LEASE_SECONDS = 15
RENEW_EVERY = 5


class LeaseKeeper:
    def __init__(self, client: Any, name: str, secrets: tuple[str, ...] = ()) -> None:
        self.client = client
        self.name = name
        self.secrets = secrets
        self.lease: Any = None
        self.lost: RemoteError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, *, wait_for_expiry: bool = False, on_wait=None) -> Any:  # noqa: ANN001
        """Take the lease; with `wait_for_expiry`, wait out a lease left by a stopped job."""
        deadline = time.monotonic() + LEASE_SECONDS + 5
        told = False
        while True:
            try:
                self.lease = self.client.acquire_lease(lease_duration=LEASE_SECONDS)
                break
            except HttpResponseError as exc:
                held = exc.status_code == 409 and error_code(exc) == "LeaseAlreadyPresent"
                if not (held and wait_for_expiry and time.monotonic() < deadline):
                    raise translate(exc, self.name, "taking the upload lease", self.secrets) \
                        from None
                if not told and on_wait is not None:
                    on_wait()
                    told = True
                time.sleep(1)
            except Exception as exc:
                raise translate(exc, self.name, "taking the upload lease", self.secrets) from None
        self._thread = threading.Thread(target=self._renew_loop, name="vhdfs-lease", daemon=True)
        self._thread.start()
        return self.lease

    def _renew_loop(self) -> None:
        while not self._stop.wait(RENEW_EVERY):
            try:
                self.lease.renew()
            except Exception as exc:  # the next write fails on the lost lease; say why then
                self.lost = translate(exc, self.name, "renewing the upload lease", self.secrets)

    def check(self) -> None:
        if self.lost is not None:
            raise self.lost

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def release(self) -> None:
        """Stop renewing and give the lease back (best effort when the service is gone)."""
        self.stop()
        if self.lease is not None:
            try:
                with remote_errors(self.name, "releasing the lease", self.secrets):
                    self.lease.release()
            except RemoteError:
                pass  # it expires on its own within LEASE_SECONDS
            self.lease = None
