"""The Azure view: the exact byte stream Azure must receive for a virtual disk.

That stream is the disk's data, zero-padded to a whole number of MiB (or a larger size asked
for), followed by a synthesized fixed-VHD footer. ``convert`` writes it to a file, ``upload``
sends it to a page blob, ``check`` judges it: nothing ever needs a temporary fixed copy.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

from .errors import UsageError
from .extents import Extent, merge
from .formats import VirtualDisk, vhd_footer
from .formats.vhd_structs import (
    FEATURE_RESERVED,
    FOOTER_COOKIE,
    FOOTER_SIZE,
    NO_DATA_OFFSET,
    VERSION_1_0,
    VHD_EPOCH,
    DiskType,
    Footer,
    chs_geometry,
)
from .sizes import MAX_SIZE, check_size

MIB = 1024 * 1024
#: Azure managed-disk bounds on the virtual size (the upload size minus the footer).
AZURE_MIN_SIZE = 20 * MIB
AZURE_MAX_SIZE = 32 * 1024**4
#: Creator "win " with the specification's CHS geometry is what Hyper-V writes; Hyper-V and Azure
#: read ``current size``, and qemu trusts ``current size`` for this creator, so every reader
#: agrees on the exact whole-MiB size (a CHS-derived size would not be a whole MiB).
CREATOR_APP = b"win "
CREATOR_VERSION = 0x000A0000
CREATOR_OS = b"Wi2k"


def round_up_mib(size: int) -> int:
    """The next whole MiB at or above ``size``: the virtual size Azure accepts."""
    return -(-size // MIB) * MIB


def _default_identity(disk: VirtualDisk) -> tuple[bytes, int]:
    """A unique id and timestamp that are stable for the same source, so that convert and upload
    of one disk produce byte-identical streams (and an upload can be resumed)."""
    footer = vhd_footer(disk)
    try:
        st = os.stat(disk.path)
        mtime, key = int(st.st_mtime), f"{os.path.abspath(disk.path)}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        mtime, key = int(time.time()), f"{disk.path}:{disk.size}"
    stamp = max(0, mtime - VHD_EPOCH) & 0xFFFFFFFF
    if footer is not None and any(footer.unique_id):
        return footer.unique_id, stamp
    digest = bytearray(hashlib.sha256(key.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x40  # RFC 4122 version 4 shape
    digest[8] = (digest[8] & 0x3F) | 0x80
    return bytes(digest), stamp


def fixed_footer(size: int, unique_id: bytes, timestamp: int) -> Footer:
    """A fixed-disk footer for ``size`` bytes of data, with a correct checksum."""
    c, h, s = chs_geometry(size)
    return Footer(
        cookie=FOOTER_COOKIE, features=FEATURE_RESERVED, version=VERSION_1_0,
        data_offset=NO_DATA_OFFSET, timestamp=timestamp, creator_app=CREATOR_APP,
        creator_version=CREATOR_VERSION, creator_os=CREATOR_OS, original_size=size,
        current_size=size, cylinders=c, heads=h, sectors_per_track=s,
        disk_type=int(DiskType.FIXED), checksum=0, unique_id=unique_id, saved_state=0,
        reserved=bytes(427),
    ).with_checksum()


@dataclass
class AzureView:
    """The fixed-VHD stream for ``disk``: ``virtual_size`` bytes of data, then the footer."""

    disk: VirtualDisk
    virtual_size: int
    footer: Footer

    @classmethod
    def of(
        cls,
        disk: VirtualDisk,
        size: int | None = None,
        *,
        unique_id: bytes | None = None,
        timestamp: int | None = None,
    ) -> AzureView:
        """The Azure view of ``disk``, rounded up to a whole MiB, or exactly ``size`` if given."""
        if size is None:
            target = round_up_mib(disk.size)
            if target > MAX_SIZE:
                raise UsageError(f"virtual size {disk.size} is too large: vhdkit writes at most "
                                 f"{MAX_SIZE} bytes")
        else:
            check_size(size)
            if size % MIB:
                raise UsageError(f"size {size} is not a whole number of MiB "
                                 f"(next whole MiB: {round_up_mib(size)})")
            if size < disk.size:
                raise UsageError(f"size {size} is smaller than the disk's virtual size "
                                 f"{disk.size}; shrinking would cut data")
            target = size
        uid, stamp = _default_identity(disk)
        footer = fixed_footer(target, unique_id or uid, stamp if timestamp is None else timestamp)
        return cls(disk, target, footer)

    @property
    def stream_size(self) -> int:
        return self.virtual_size + FOOTER_SIZE

    @property
    def resized(self) -> bool:
        return self.virtual_size != self.disk.size

    @property
    def footer_bytes(self) -> bytes:
        return self.footer.build()

    def data_extents(self) -> list[Extent]:
        """Ranges of the data area that may be non-zero (the padding never is)."""
        limit = min(self.disk.size, self.virtual_size)
        return [Extent(e.start, min(e.end, limit) - e.start)
                for e in self.disk.extents() if e.start < limit]

    def extents(self) -> list[Extent]:
        """``data_extents`` plus the footer sector: everything that must be written."""
        return merge([*self.data_extents(), Extent(self.virtual_size, FOOTER_SIZE)])

    def read_at(self, offset: int, length: int) -> bytes:
        """Bytes of the stream: disk data, zero padding, then the footer."""
        end = min(self.stream_size, offset + length)
        if offset >= end:
            return b""
        parts: list[bytes] = []
        if offset < self.virtual_size:
            stop = min(end, self.virtual_size)
            data = self.disk.read_at(offset, stop - offset)
            parts.append(data + bytes(stop - offset - len(data)))
        if end > self.virtual_size:
            fb = self.footer_bytes
            lo = max(offset, self.virtual_size) - self.virtual_size
            parts.append(fb[lo : end - self.virtual_size])
        return b"".join(parts)
