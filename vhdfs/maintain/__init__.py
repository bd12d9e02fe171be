"""Whole-image maintenance jobs: commit a child into its parent, check and repair one image
or a chain, re-link a child to a moved parent. See docs/maintain.md."""
