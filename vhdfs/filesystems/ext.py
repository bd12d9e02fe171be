"""What an ext2/3/4 superblock and its group descriptors say that TSK's allocation flags
leave out.

- Whether the file system was left clean: a journal that needs recovery (its block bitmaps
  are then behind what the journal holds) or a state other than "valid" keeps the volume
  whole in the free-space map.
- Block groups flagged BLOCK_UNINIT (uninit_bg, metadata_csum): their block bitmap was never
  written and the kernel computes it (a backup superblock and group descriptors, reserved
  GDT blocks). TSK reads the unwritten bitmap as all free, backup superblocks included, so
  those groups are kept whole: nothing was ever allocated in them, so no deleted data lies
  there to be skipped.
- Layouts this reading does not know (meta_bg descriptors, bigalloc clusters) keep the
  volume whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from construct import Const, Container, Int16ul, Int32ul, Padding, Struct

from vhdfs.filesystems.tsk import VolumeImage

SUPERBLOCK_AT = 1024
SUPERBLOCK = Struct(
    "inodes_count" / Int32ul,
    "blocks_count_lo" / Int32ul,
    Padding(12),
    "first_data_block" / Int32ul,  # 0x14
    "log_block_size" / Int32ul,
    Padding(4),
    "blocks_per_group" / Int32ul,  # 0x20
    Padding(20),
    "magic" / Const(b"\x53\xef"),  # 0x38
    "state" / Int16ul,
    Padding(0x5C - 0x3C),
    "feature_compat" / Int32ul,  # 0x5C
    "feature_incompat" / Int32ul,
    "feature_ro_compat" / Int32ul,
    Padding(0xFE - 0x68),
    "desc_size" / Int16ul,  # 0xFE
    Padding(0x150 - 0x100),
    "blocks_count_hi" / Int32ul,  # 0x150
)
GROUP_DESCRIPTOR_FLAGS_AT = 0x12
STATE_VALID, STATE_ERRORS = 0x0001, 0x0002
INCOMPAT_RECOVER = 0x0004  # the journal needs recovery
INCOMPAT_META_BG = 0x0010
INCOMPAT_64BIT = 0x0080
RO_COMPAT_GDT_CSUM = 0x0010  # uninit_bg
RO_COMPAT_BIGALLOC = 0x0200
RO_COMPAT_METADATA_CSUM = 0x0400
BG_BLOCK_UNINIT = 0x0002
MAX_GROUPS = 1 << 22  # 32 TiB in 8 MiB groups: more is a damaged superblock


@dataclass
class ExtFacts:
    block_size: int
    not_clean: str = ""  # why the volume is kept whole ("" when it may be walked)
    uninit_groups: list[tuple[int, int]] = field(default_factory=list)  # (first block, count)


def read_ext(image: VolumeImage) -> ExtFacts:
    raw = image.read_bytes(SUPERBLOCK_AT, 1024)
    try:
        sb = SUPERBLOCK.parse(raw)
    except Exception:  # noqa: BLE001 - construct's errors: no ext superblock at all
        return ExtFacts(0, "no ext superblock where TSK found one")
    block_size = 1024 << min(sb.log_block_size, 6)
    facts = ExtFacts(block_size, _not_clean(sb))
    if facts.not_clean:
        return facts
    if not sb.feature_ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM):
        return facts  # group flags mean nothing: every bitmap is written
    blocks = sb.blocks_count_lo
    if sb.feature_incompat & INCOMPAT_64BIT:
        blocks |= sb.blocks_count_hi << 32
    per_group = sb.blocks_per_group
    if not per_group or blocks <= sb.first_data_block:
        facts.not_clean = "its superblock's block counts are damaged"
        return facts
    groups = -(-(blocks - sb.first_data_block) // per_group)
    if groups > MAX_GROUPS:
        facts.not_clean = f"its superblock says {groups} block groups, too many to be true"
        return facts
    desc_size = sb.desc_size if sb.feature_incompat & INCOMPAT_64BIT and sb.desc_size >= 32 else 32
    table = image.read_bytes((sb.first_data_block + 1) * block_size, groups * desc_size)
    for group in range(groups):
        at = group * desc_size + GROUP_DESCRIPTOR_FLAGS_AT
        if int.from_bytes(table[at:at + 2], "little") & BG_BLOCK_UNINIT:
            first = sb.first_data_block + group * per_group
            facts.uninit_groups.append((first, min(per_group, blocks - first)))
    return facts


def _not_clean(sb: Container) -> str:
    """Why a volume with this superblock is kept whole ("" when it may be walked)."""
    if sb.feature_incompat & INCOMPAT_RECOVER:
        return "its journal needs recovery (mounted, or not cleanly unmounted)"
    if not sb.state & STATE_VALID or sb.state & STATE_ERRORS:
        return f"its state is {sb.state:#x}, not clean (mounted, or errors found)"
    if sb.feature_incompat & INCOMPAT_META_BG:
        return "meta_bg group descriptors, a layout vhdfs does not read"
    if sb.feature_ro_compat & RO_COMPAT_BIGALLOC:
        return "bigalloc clusters, which TSK does not walk"
    return ""
