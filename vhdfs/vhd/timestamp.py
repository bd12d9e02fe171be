"""VHD timestamps: seconds since 2000-01-01T00:00:00Z."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

VHD_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_EPOCH_UNIX = int(VHD_EPOCH.timestamp())


def vhd_now() -> int:
    return max(0, int(time.time()) - _EPOCH_UNIX) & 0xFFFFFFFF


def vhd_to_datetime(value: int) -> datetime:
    return VHD_EPOCH + timedelta(seconds=value)


def vhd_to_iso(value: int) -> str:
    return vhd_to_datetime(value).strftime("%Y-%m-%dT%H:%M:%SZ")
