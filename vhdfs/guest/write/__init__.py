"""Guest writes without root: `vhdfs put`, `rm` and `mkdir`.

No file-system writer of our own: the chain is mounted writable in a private folder (by
the command line, through vhdfs.fuse.private) and the file system's own tool changes the
partition file there: ntfs-3g for NTFS, debugfs for ext2/3/4, mtools for FAT. Inside, the
imports run run -> {ntfs, ext, fat} -> plan -> {tools, errors}:

  plan   what a request changes, each path as stored, every refusal before any write
  ntfs, ext, fat   one change at a time with that file system's tool (why each: its module)
  run    the tool for a volume, the changes in order, one line when one fails
"""

from vhdfs.guest.write.errors import NotWritable, ToolFailed, ToolMissing, WriteFailed
from vhdfs.guest.write.plan import (
    Change,
    MakeDir,
    Plan,
    Remove,
    Target,
    WriteFile,
    plan_mkdir,
    plan_put,
    plan_rm,
    shown,
)
from vhdfs.guest.write.run import Outcome, apply, check_tools, open_writer, summary

__all__ = [
    "Change", "MakeDir", "NotWritable", "Outcome", "Plan", "Remove", "Target", "ToolFailed",
    "ToolMissing", "WriteFailed", "WriteFile", "apply", "check_tools", "open_writer",
    "plan_mkdir", "plan_put", "plan_rm", "shown", "summary",
]
