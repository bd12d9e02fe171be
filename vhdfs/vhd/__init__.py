"""On-disk structures of the VHD format, declared once with construct."""
