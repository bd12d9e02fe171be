"""The blocks a file system does not use, as The Sleuth Kit's own block walk says.

pytsk3 opens file systems but does not bind `tsk_fs_block_walk`, the function behind TSK's
`blkls`: for each block it gives TSK's allocation flags, from the file system's own records
(NTFS's $Bitmap, the FAT, exFAT's allocation bitmap, ext's block bitmaps with their group
metadata). libtsk is linked into pytsk3's extension module with its symbols exported, so
ctypes calls it there, on the very TSK_FS_INFO pytsk3 opened: the file system is read
through the same image object (our chain), and nothing of the file system's format is
parsed here.

Reaching the TSK_FS_INFO: pytsk3's wrapper objects keep the C pointer right after the
Python object header. That is pytsk3's internal layout, so it is checked before any use:
the pointer must lead to a struct whose tag is TSK_FS_INFO_TAG and whose block count, first
and last block and block size are the ones pytsk3 reports. Any mismatch (another pytsk3
build) raises `BlockWalkUnavailable`, and callers keep the volume whole.

The walk runs with the GIL held (ctypes.PyDLL): TSK reads the volume through pytsk3's image
object, which calls back into Python.
"""

from __future__ import annotations

import ctypes

import pytsk3

_FS_INFO_TAG = int(pytsk3.TSK_FS_INFO_TAG)
_BLOCK_TAG = int(pytsk3.TSK_FS_BLOCK_TAG)
_WALK_UNALLOCATED = int(pytsk3.TSK_FS_BLOCK_WALK_FLAG_UNALLOC) | int(pytsk3.TSK_FS_BLOCK_WALK_FLAG_AONLY)
_WALK_CONTINUE = int(pytsk3.TSK_WALK_CONT)
_WALK_STOP = int(pytsk3.TSK_WALK_STOP)


class BlockWalkUnavailable(Exception):
    """TSK's block walk cannot be used on this file system (or with this pytsk3)."""


class _FsInfoHead(ctypes.Structure):
    """The first fields of TSK's `struct TSK_FS_INFO` (tsk/fs/tsk_fs.h)."""

    _fields_ = [
        ("tag", ctypes.c_int),
        ("img_info", ctypes.c_void_p),
        ("offset", ctypes.c_int64),
        ("inum_count", ctypes.c_uint64),
        ("root_inum", ctypes.c_uint64),
        ("first_inum", ctypes.c_uint64),
        ("last_inum", ctypes.c_uint64),
        ("block_count", ctypes.c_uint64),
        ("first_block", ctypes.c_uint64),
        ("last_block", ctypes.c_uint64),
        ("last_block_act", ctypes.c_uint64),
        ("block_size", ctypes.c_uint),
    ]


class _Block(ctypes.Structure):
    """TSK's `struct TSK_FS_BLOCK`."""

    _fields_ = [
        ("tag", ctypes.c_int),
        ("fs_info", ctypes.c_void_p),
        ("buf", ctypes.c_void_p),
        ("addr", ctypes.c_uint64),
        ("flags", ctypes.c_int),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(_Block), ctypes.c_void_p)
_library: ctypes.PyDLL | None = None


def _libtsk() -> ctypes.PyDLL:
    global _library
    if _library is None:
        library = ctypes.PyDLL(pytsk3.__file__)
        try:
            walk = library.tsk_fs_block_walk
            error = library.tsk_error_get
            reset = library.tsk_error_reset
        except AttributeError as exc:
            raise BlockWalkUnavailable(f"pytsk3 does not export TSK's block walk ({exc})") from None
        walk.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int,
                         _CALLBACK, ctypes.c_void_p]
        walk.restype = ctypes.c_uint8
        error.argtypes, error.restype = [], ctypes.c_char_p
        reset.argtypes, reset.restype = [], None
        _library = library
    return _library


def _fs_info_pointer(fs: pytsk3.FS_Info) -> tuple[int, _FsInfoHead]:
    """The TSK_FS_INFO behind `fs`, checked against what pytsk3 reports of it."""
    info = fs.info
    address = ctypes.c_void_p.from_address(id(info) + object.__basicsize__).value
    if not address:
        raise BlockWalkUnavailable("pytsk3's file system object holds no TSK_FS_INFO pointer")
    head = _FsInfoHead.from_address(address)
    expected = (_FS_INFO_TAG, int(info.block_count), int(info.first_block),
                int(info.last_block), int(info.block_size))
    found = (head.tag, head.block_count, head.first_block, head.last_block, head.block_size)
    if found != expected:
        raise BlockWalkUnavailable(f"this pytsk3 ({pytsk3.get_version()}) keeps its file system "
                                   "differently from what vhdfs knows")
    return address, head


def unallocated_runs(fs: pytsk3.FS_Info) -> list[tuple[int, int]]:
    """(first block, count) of each run of blocks TSK flags unallocated, in order. Blocks past
    the end of the volume's image (a truncated volume) are not walked."""
    library = _libtsk()
    address, head = _fs_info_pointer(fs)
    runs: list[tuple[int, int]] = []
    current = [-1, -1]  # start, end of the run being collected
    problems: list[str] = []

    def seen(block: ctypes._Pointer, _data: int) -> int:
        try:
            found = block.contents
            if found.tag != _BLOCK_TAG:
                problems.append(f"a block record with tag {found.tag:#x}")
                return _WALK_STOP
            addr = found.addr
            if addr == current[1]:
                current[1] = addr + 1
            else:
                if current[0] >= 0:
                    runs.append((current[0], current[1] - current[0]))
                current[0], current[1] = addr, addr + 1
            return _WALK_CONTINUE
        except BaseException as exc:  # noqa: BLE001 - an exception cannot cross the C walk
            problems.append(repr(exc))
            return _WALK_STOP

    callback = _CALLBACK(seen)
    library.tsk_error_reset()
    last = min(head.last_block, head.last_block_act)
    failed = library.tsk_fs_block_walk(address, head.first_block, last, _WALK_UNALLOCATED,
                                       callback, None)
    if failed or problems:
        text = (library.tsk_error_get() or b"").decode(errors="replace").strip()
        raise BlockWalkUnavailable("TSK's block walk failed: " + ("; ".join(problems) or text
                                                                  or "no reason given"))
    if current[0] >= 0:
        runs.append((current[0], current[1] - current[0]))
    return runs
