"""Capture: the only code that reads packets from capture files (pcapfile) or a NIC.

Frames leave this package as plain `(ts_seconds, linktype, frame_bytes)` tuples
(`detector.model.Frame`), one per packet, with the link type of the packet's own interface.
"""

from detector.capture.pcapfile import (
    CaptureError,
    PcapNgWriter,
    PcapWriter,
    expand_paths,
    file_size,
    iter_frames,
)

__all__ = ["CaptureError", "PcapNgWriter", "PcapWriter", "expand_paths", "file_size", "iter_frames"]
