"""Which Azure VM generations the OS disk boots, for which CPU, and whether Trusted Launch can work.

- V1 (BIOS): boot code in the MBR and then either an active partition whose boot sector loads
  the OS (Windows: the NTFS boot sector and \\bootmgr) or GRUB's core image after the MBR; on a
  GPT disk, boot code in the protective MBR and GRUB's core in a BIOS boot partition.
- V2 (UEFI): an EFI System Partition (GPT type C12A7328-..., MBR type 0xEF) whose FAT holds a
  loader: \\EFI\\BOOT\\BOOTX64.EFI / BOOTAA64.EFI, \\EFI\\Microsoft\\Boot\\bootmgfw.efi,
  \\EFI\\<distro>\\shim*.efi / grub*.efi / systemd-boot*.efi.
- Architecture from the PE machine of those loaders and of the OS kernel (ntoskrnl.exe, or the
  Linux kernel image header); Arm64 boots only on V2.
- Trusted Launch (Secure Boot) needs a signed first-stage loader: a signed shim for Linux,
  a signed Windows Boot Manager. Signature *presence* is checked, not its validity.

Only headers are read: a few KiB per loader, one sector per boot sector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import PreflightError
from ..formats import VirtualDisk
from ..report import BootFacts, Finding
from .arch import HEADER_BYTES, kernel_architecture, parse_pe
from .fs import Filesystem
from .tables import SECTOR
from .volumes import Volume

TIB2 = 2 << 40
MAX_EFI_DIRS = 64  # vendor directories looked at under \EFI
KERNEL_HEAD = 64 << 10  # a gzip-compressed kernel needs more input for its first 4 KiB
MAX_KERNELS = 8  # kernel images looked at per /boot
FALLBACK = ("EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/BOOTAA64.EFI")
WINDOWS_LOADER = "EFI/Microsoft/Boot/bootmgfw.efi"
VENDOR_LOADERS = ("shimx64.efi", "shimaa64.efi", "grubx64.efi", "grubaa64.efi",
                  "systemd-bootx64.efi", "systemd-bootaa64.efi")
NTOSKRNL = "Windows/System32/ntoskrnl.exe"
PRESENCE = "signature presence only, not cryptographically validated"
MBR_CODE_NAMES = ((b"GRUB", "GRUB boot.img"),
                  (b"Missing operating system", "Windows boot code"),
                  (b"Invalid partition table", "Windows boot code"), (b"SYSLINUX", "SYSLINUX"))


@dataclass(frozen=True)
class BootVolume:
    """A volume with what pre-flight could open on it."""

    volume: Volume
    fstype: str | None
    fs: Filesystem | None


@dataclass(frozen=True)
class Loader:
    path: str  # "gpt partition 1: EFI/BOOT/BOOTX64.EFI"
    name: str  # the file name, lower case
    architecture: str
    signed: bool
    signature: str  # evidence for the signature (or its absence)

    @property
    def first_stage(self) -> bool:
        """What UEFI firmware starts (and Secure Boot checks): shim, the Windows Boot Manager,
        or the removable-media fallback."""
        return self.name.startswith(("shim", "bootx64", "bootaa64", "bootmgfw"))


@dataclass
class _Judged:
    v1: list[str] = field(default_factory=list)  # evidence per path found
    v2: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was looked at and not found
    loaders: list[Loader] = field(default_factory=list)


def judge_boot(disk: VirtualDisk, scheme: str, volumes: Sequence[BootVolume], os_name: str,
               os_fs: Filesystem) -> tuple[BootFacts, list[Finding]]:
    """The generations, architecture and Trusted Launch readiness of an OS disk."""
    j = _Judged()
    sector0 = disk.read_at(0, SECTOR)
    code = _mbr_code(sector0)
    if scheme == "mbr":
        _v1_mbr(disk, sector0, code, volumes, j)
    elif scheme == "gpt":
        _v1_gpt(disk, code, volumes, j)
    esps = [b for b in volumes if b.volume.type_name == "efi-system"]
    for esp in esps:
        try:
            _v2_esp(esp, j)
        except PreflightError as exc:  # a damaged FAT: this ESP boots nothing we can see
            j.notes.append(f"EFI System Partition {esp.volume.label} cannot be read: {exc}")
    if not esps:
        j.notes.append(f"no EFI System Partition ({scheme} table)")

    try:
        os_arch = _os_architecture(os_name, os_fs, volumes)
    except PreflightError:  # the kernel cannot be read: the loaders may still tell
        os_arch = None
    loader_archs = sorted({ld.architecture for ld in j.loaders})
    findings: list[Finding] = []
    arch, arch_findings = _architecture(os_arch, loader_archs, bool(j.v1), bool(j.v2))
    findings += arch_findings
    generations = (["V1"] if j.v1 and arch != "Arm64" else []) + (["V2"] if j.v2 else [])
    findings += _generation_findings(disk, scheme, esps, volumes, j, generations, os_name)
    trusted, tl = _trusted_launch(os_name, j, generations)
    findings.append(tl)
    evidence = tuple([*(f"V1: {e}" for e in j.v1), *(f"V2: {e}" for e in j.v2),
                      *([f"architecture: {os_arch[1]}"] if os_arch else [])])
    return BootFacts(tuple(generations), arch, trusted, evidence), findings


# -- V1 ---------------------------------------------------------------------------------------

def _mbr_code(sector0: bytes) -> str | None:
    """A name for the boot code in the first 440 bytes of the MBR, or None when there is none."""
    code = sector0[:440]
    if len(code) < 440 or not any(code):
        return None
    return next((name for sig, name in MBR_CODE_NAMES if sig in code), "boot code")


def _v1_mbr(disk: VirtualDisk, sector0: bytes, code: str | None,
            volumes: Sequence[BootVolume], j: _Judged) -> None:
    if code is None:
        j.notes.append("no boot code in the MBR (bytes 0..439 are zero)")
        return
    after = disk.read_at(SECTOR, SECTOR)  # GRUB embeds its core right after the MBR
    if any(after) and after[:8] != b"EFI PART":
        j.v1.append(f"{code} in the MBR, boot loader core at LBA 1")
        return
    active = [i + 1 for i in range(4) if sector0[446 + 16 * i] == 0x80]
    if not active:
        j.notes.append(f"{code} in the MBR but no active partition and nothing at LBA 1")
        return
    for b in volumes:
        if b.volume.scheme != "mbr" or b.volume.number not in active:
            continue
        what = _boot_sector(disk, b)
        if what:
            j.v1.append(f"{code} in the MBR, active partition {b.volume.number}: {what}")
            return
        j.notes.append(f"active partition {b.volume.number} has no boot sector that loads an OS")


def _boot_sector(disk: VirtualDisk, b: BootVolume) -> str | None:
    """What the active partition's boot sector would load, or None."""
    vbr = disk.read_at(b.volume.offset, SECTOR)
    if len(vbr) < SECTOR or vbr[510:512] != b"\x55\xaa" or vbr[0] not in (0xEB, 0xE9):
        return None
    if vbr[3:11] == b"NTFS    ":
        if b.fs is not None and b.fs.kind("bootmgr") == "file":
            return "NTFS boot sector and \\bootmgr"
        return None  # an NTFS boot sector without the boot manager loads nothing
    if any(vbr[0x5A:0x1FE]):  # a FAT/ext boot sector with code (GRUB installed in a partition)
        return "boot sector with boot code"
    return None


def _v1_gpt(disk: VirtualDisk, code: str | None, volumes: Sequence[BootVolume], j: _Judged) -> None:
    bios = [b for b in volumes if b.volume.type_name == "bios-boot"]
    if not bios:
        j.notes.append("no BIOS boot partition")
        return
    b = bios[0]
    core = disk.read_at(b.volume.offset, SECTOR)
    if code is None:
        j.notes.append(f"BIOS boot partition {b.volume.number} but no boot code in the "
                       "protective MBR")
    elif not any(core):
        j.notes.append(f"BIOS boot partition {b.volume.number} is empty (no GRUB core)")
    else:
        j.v1.append(f"{code} in the protective MBR, GRUB core in BIOS boot partition "
                    f"{b.volume.number}")


# -- V2 ---------------------------------------------------------------------------------------

def _v2_esp(esp: BootVolume, j: _Judged) -> None:
    label = esp.volume.label
    if esp.fs is None or esp.fstype != "vfat":
        j.notes.append(f"EFI System Partition {label} holds {esp.fstype or 'no filesystem'}, "
                       "not a readable FAT")
        return
    paths = [*FALLBACK, WINDOWS_LOADER]
    vendors = [d for d in (esp.fs.listdir("EFI") or []) if d.upper() not in ("BOOT", "MICROSOFT")]
    for d in vendors[:MAX_EFI_DIRS]:
        names = {n.lower(): n for n in esp.fs.listdir(f"EFI/{d}") or []}
        paths += [f"EFI/{d}/{names[n]}" for n in VENDOR_LOADERS if n in names]
    found = [ld for p in paths if (ld := _loader(esp, p)) is not None]
    if not found:
        j.notes.append(f"EFI System Partition {label} holds no EFI loader")
        return
    j.loaders += found
    j.v2.append(f"EFI System Partition {label}: " + ", ".join(
        f"\\{ld.path.split(': ', 1)[1].replace('/', chr(92))} ({ld.architecture})"
        for ld in found))


def _loader(esp: BootVolume, path: str) -> Loader | None:
    assert esp.fs is not None
    f = esp.fs.open_file(path)
    if f is None:
        return None
    try:
        size = f.get_size()
        f.seek(0)
        head = f.read(min(size, HEADER_BYTES))
        pe = parse_pe(head, size)
        if pe is None or pe.architecture not in ("x64", "Arm64"):
            return None
        cert = b""
        if pe.signature is not None:
            f.seek(pe.signature[0])
            cert = f.read(8)
    except (OSError, RuntimeError, ValueError):  # a damaged FAT chain: not a usable loader
        return None
    signature = f"no Authenticode signature in {path}"
    signed = False
    if pe.signature is not None:
        off, length = pe.signature
        pe = parse_pe(head, size, cert)
        if pe is not None and pe.signature is not None:
            signed = True
            signature = (f"{path}: Authenticode signature of {length} bytes at offset {off} "
                         f"({PRESENCE})")
    assert pe is not None
    name = path.rsplit("/", 1)[-1].lower()
    return Loader(f"{esp.volume.label}: {path}", name, pe.architecture, signed, signature)


# -- architecture ------------------------------------------------------------------------------

def _os_architecture(os_name: str, os_fs: Filesystem,
                     volumes: Sequence[BootVolume]) -> tuple[str, str] | None:
    """(architecture, evidence) from ntoskrnl.exe or a Linux kernel image."""
    if os_name == "windows":
        head = os_fs.read_file(NTOSKRNL, HEADER_BYTES)
        size = os_fs.file_size(NTOSKRNL)
        pe = None if head is None or size is None else parse_pe(head, size)
        if pe is None:
            return None
        return pe.architecture, f"\\{NTOSKRNL.replace('/', chr(92))} PE machine " \
            f"0x{pe.machine:04x} ({pe.architecture})"
    # Linux: /boot on the root filesystem, or a separate /boot volume holding vmlinuz-* at its top.
    places = [(os_fs, "boot", "")] + [(b.fs, "", f" on {b.volume.label}") for b in volumes
                                      if b.fs is not None and b.fs is not os_fs]
    for fs, folder, where in places:
        names = sorted(n for n in fs.listdir(folder or "/") or []
                       if n.startswith(("vmlinuz-", "vmlinux-", "Image-")))
        for name in reversed(names[-MAX_KERNELS:]):  # the newest version sorts last
            path = f"/{folder}/{name}" if folder else f"/{name}"
            head = fs.read_file(path, KERNEL_HEAD)
            found = kernel_architecture(head) if head else None
            if found:
                return found[0], f"{path}{where}: {found[1]}"
    return None


def _architecture(os_arch: tuple[str, str] | None, loader_archs: list[str], v1: bool,
                  v2: bool) -> tuple[str | None, list[Finding]]:
    rule = "boot.architecture"
    if os_arch is None:
        arch = loader_archs[0] if len(loader_archs) == 1 else None
        ev = f"EFI loaders: {', '.join(loader_archs) or 'none'}; no kernel image read"
        if arch is None:
            return None, [Finding(rule, "info", "architecture not determined", ev,
                                  applicable=False)]
        return arch, [Finding(rule, "info", f"architecture {arch} (from the EFI loaders)", ev,
                              passed=True)]
    arch, evidence = os_arch
    ev = f"{evidence}; EFI loaders: {', '.join(loader_archs) or 'none'}"
    if loader_archs and arch not in loader_archs:
        return arch, [Finding(rule, "error", f"the EFI loaders are for {', '.join(loader_archs)} "
                              f"but the OS is {arch}: the firmware cannot start it", ev,
                              f"install the {arch} boot loader on the EFI System Partition")]
    if arch not in ("x64", "Arm64"):
        return arch, [Finding(rule, "error", f"{arch} OS: Azure runs only x64 and Arm64", ev,
                              "build the image for x64 or Arm64")]
    if arch == "Arm64" and not v2:
        why = "it has only a BIOS boot path" if v1 else "it has no UEFI loader"
        return arch, [Finding(rule, "error", f"Arm64 boots only on Generation 2 (UEFI): {why}",
                              ev, "install an Arm64 EFI loader (BOOTAA64.EFI) on an EFI System "
                              "Partition")]
    return arch, [Finding(rule, "info", f"architecture {arch}", ev, passed=True)]


# -- generations and Trusted Launch -------------------------------------------------------------

def _generation_findings(disk: VirtualDisk, scheme: str, esps: list[BootVolume],
                         volumes: Sequence[BootVolume], j: _Judged,
                         generations: list[str], os_name: str) -> list[Finding]:
    evidence = "; ".join([*j.v1, *j.v2, *j.notes])
    add_esp = ("convert to GPT and add the UEFI boot files: mbr2gpt /convert /allowFullOS "
               "(it creates the EFI System Partition and runs bcdboot)" if os_name == "windows"
               else "add an EFI System Partition (FAT32, type EF00) mounted at /boot/efi, then "
               "install shim-signed and grub-efi (grub-install --target=x86_64-efi)")
    if not generations and j.v1:
        return []  # a BIOS path for an Arm64 OS: the architecture finding says why it fails
    if not generations:
        bios = any(b.volume.type_name == "bios-boot" for b in volumes)
        if scheme == "gpt" and not esps and not bios:
            return [Finding("boot.gpt-no-esp", "error",
                            "GPT disk with no EFI System Partition and no BIOS boot partition: "
                            "it boots on neither generation", evidence, add_esp)]
        return [Finding("boot.none", "error",
                        "no boot path found: neither BIOS boot code that loads an OS nor an "
                        "EFI System Partition with a loader", evidence,
                        "reinstall the boot loader (grub-install, or bcdboot on Windows) "
                        "before capturing the image")]
    out = [Finding("boot.generations", "info", f"boots Azure VM generation(s) "
                   f"{', '.join(generations)}", evidence, passed=True)]
    if generations == ["V1"]:
        if disk.size > TIB2:
            out.append(Finding(
                "boot.v1-over-2tib", "error",
                f"the OS disk is {disk.size / (1 << 40):.2f} TiB but boots only on "
                "Generation 1 (BIOS), which uses at most 2 TiB of an OS disk",
                f"disk size {disk.size} bytes; {evidence}",
                f"{add_esp}, or shrink the disk to 2 TiB"))
        out.append(Finding("boot.v1-only", "warning",
                           "boots only on Generation 1 (BIOS): no Trusted Launch, no Arm64, "
                           "no Generation 2 VM sizes", evidence, add_esp))
    return out


def _trusted_launch(os_name: str, j: _Judged,
                    generations: list[str]) -> tuple[bool | None, Finding]:
    rule = "boot.trusted-launch"
    if "V2" not in generations:
        return None, Finding(rule, "info", "Trusted Launch: not possible, because the disk does "
                             "not boot UEFI (Generation 2)", "; ".join(j.v1 + j.notes) or "-",
                             applicable=False)
    first = [ld for ld in j.loaders if ld.first_stage]
    want = "a signed Windows Boot Manager" if os_name == "windows" else "a signed shim"
    signed = [ld for ld in first if ld.signed]
    if signed:
        return True, Finding(rule, "info", f"Trusted Launch: possible ({want} is present)",
                             "; ".join(ld.signature for ld in signed), passed=True)
    ev = "; ".join(ld.signature for ld in first) or \
        "no first-stage loader (shim, bootmgfw.efi or the \\EFI\\BOOT fallback) found"
    fix = ("install shim-signed and point the fallback \\EFI\\BOOT loader at it (grub-install "
           "--uefi-secure-boot), or create the VM with --security-type Standard"
           if os_name != "windows" else
           "run bcdboot C:\\Windows /f UEFI to copy the signed boot manager, or create the VM "
           "with --security-type Standard")
    return False, Finding(rule, "warning",
                          f"Trusted Launch: not possible, because no first-stage loader is "
                          f"signed ({want} is needed; {PRESENCE})", ev, fix)
