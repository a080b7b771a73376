"""Which CPU a boot file is for: PE/COFF headers (EFI loaders, ntoskrnl.exe) and Linux kernel
image headers (x86 bzImage, arm64 Image, possibly gzip-compressed as Debian ships it).

Only headers are read (the first few KiB); every offset is checked against the bytes at hand.
The Authenticode check is *presence* of a signature (the PE security directory names a
WIN_CERTIFICATE inside the file), not a cryptographic validation.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

#: COFF machine field -> Azure's architecture name (or the plain name for others)
MACHINES: dict[int, str] = {0x8664: "x64", 0xAA64: "Arm64", 0x014C: "x86", 0x01C4: "ARM",
                            0x5064: "RISC-V64"}
HEADER_BYTES = 4096  # enough for the DOS, COFF and optional headers of any real loader
PE32, PE32_PLUS = 0x10B, 0x20B
SECURITY_DIR = 4
WIN_CERT_REVISION_2 = 0x0200
WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002
ARM64_MAGIC = b"ARM\x64"  # at 0x38 of an arm64 kernel Image
BZIMAGE_MAGIC = b"HdrS"  # at 0x202 of an x86 bzImage setup header
XLF_KERNEL_64 = 0x1


@dataclass(frozen=True)
class PeInfo:
    machine: int
    subsystem: int
    #: (file offset, size) of the Authenticode blob, or None when the directory is empty
    signature: tuple[int, int] | None

    @property
    def architecture(self) -> str:
        return MACHINES.get(self.machine, f"machine 0x{self.machine:04x}")

    @property
    def signed(self) -> bool:
        return self.signature is not None


def _u16(b: bytes, at: int) -> int | None:
    return struct.unpack_from("<H", b, at)[0] if at >= 0 and at + 2 <= len(b) else None


def _u32(b: bytes, at: int) -> int | None:
    return struct.unpack_from("<I", b, at)[0] if at >= 0 and at + 4 <= len(b) else None


def parse_pe(head: bytes, file_size: int, tail: bytes | None = None) -> PeInfo | None:
    """The PE header at the start of ``head``; None when it is not a PE file.

    ``tail`` is the first bytes of the Authenticode blob when the caller read them (its
    WIN_CERTIFICATE header is then checked too).
    """
    if head[:2] != b"MZ":
        return None
    pe = _u32(head, 0x3C)
    if pe is None or pe + 24 > len(head) or head[pe:pe + 4] != b"PE\0\0":
        return None
    machine = _u16(head, pe + 4)
    opt_size = _u16(head, pe + 20)
    opt = pe + 24
    magic = _u16(head, opt)
    if machine is None or opt_size is None or magic not in (PE32, PE32_PLUS):
        return None
    subsystem = _u16(head, opt + 68) or 0
    count_at, dirs_at = (opt + 92, opt + 96) if magic == PE32 else (opt + 108, opt + 112)
    count = _u32(head, count_at) or 0
    signature = None
    if count > SECURITY_DIR and dirs_at + 8 * SECURITY_DIR + 8 <= min(len(head), opt + opt_size):
        off, size = struct.unpack_from("<II", head, dirs_at + 8 * SECURITY_DIR)
        # The security directory holds a file offset (not an RVA); it must lie in the file.
        if size >= 8 and off > 0 and off + size <= file_size:
            signature = (off, size)
            if tail is not None and not _win_certificate(tail):
                signature = None
    return PeInfo(machine, subsystem, signature)


def _win_certificate(raw: bytes) -> bool:
    rev, kind = _u16(raw, 4), _u16(raw, 6)
    return rev == WIN_CERT_REVISION_2 and kind == WIN_CERT_TYPE_PKCS_SIGNED_DATA


def kernel_architecture(head: bytes) -> tuple[str, str] | None:
    """(architecture, what was read) for a Linux kernel image's first bytes, else None."""
    if head[:2] == b"\x1f\x8b":  # Debian's arm64 vmlinuz is a gzip-compressed Image
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, HEADER_BYTES)
        except zlib.error:
            return None
        found = kernel_architecture(head)
        return None if found is None else (found[0], "gzip-compressed " + found[1])
    if head[0x38:0x3C] == ARM64_MAGIC:
        return "Arm64", "arm64 Image header (magic 'ARM\\x64' at 0x38)"
    if head[0x202:0x206] == BZIMAGE_MAGIC:
        flags = _u16(head, 0x236) or 0
        version = _u16(head, 0x206) or 0
        if version >= 0x020C and flags & XLF_KERNEL_64:
            return "x64", "x86 bzImage setup header ('HdrS' at 0x202, 64-bit entry in xloadflags)"
        return "x86", f"x86 bzImage setup header ('HdrS' at 0x202, protocol {version:#06x}, " \
            "no 64-bit entry)"
    pe = parse_pe(head, 1 << 62)  # an EFI zboot / EFI-stub kernel: the PE machine says it
    if pe is not None:
        return pe.architecture, f"PE machine 0x{pe.machine:04x}"
    return None
