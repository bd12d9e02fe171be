"""The file systems inside a flat disk as The Sleuth Kit reads them, for the layers that need
them below the guest tools: opening a volume's file system (`tsk`), TSK's block walk
(`blockwalk`), what NTFS, FAT/exFAT and ext say of their own state (`ntfs`, `fat`, `ext`),
and the free-space map of a disk (`free`), which convert and upload --skip-free use.
Imports inside run free -> {ntfs, fat, ext, blockwalk} -> tsk.
"""
