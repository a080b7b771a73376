"""/etc/fstab: parse it, match its devices to volumes, and read through the mounted tree."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .fs import Filesystem, Probe
from .volumes import BinaryFile, Volume


@dataclass(frozen=True)
class FstabEntry:
    spec: str
    mountpoint: str
    fstype: str
    options: str
    line: int

    @property
    def text(self) -> str:
        return f"/etc/fstab line {self.line}: {self.spec} {self.mountpoint} {self.fstype}"


def parse_fstab(text: str) -> list[FstabEntry]:
    out = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        fields = line.split()
        if len(fields) < 3:
            continue
        options = fields[3] if len(fields) > 3 else "defaults"
        out.append(FstabEntry(_unescape(fields[0]), _unescape(fields[1]), fields[2], options, n))
    return out


def _unescape(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


_PARTNUM = re.compile(r"^/dev/(?:[shv]d[a-z]|xvd[a-z]|nvme\d+n\d+p|mmcblk\d+p)(\d+)$")


def matches(spec: str, vol: Volume, probe: Probe) -> bool:
    """Does an fstab device spec (UUID=, LABEL=, PARTUUID=, /dev/...) name this volume?"""
    key, _, value = spec.partition("=")
    for prefix, k in (("/dev/disk/by-uuid/", "UUID"), ("/dev/disk/by-label/", "LABEL"),
                      ("/dev/disk/by-partuuid/", "PARTUUID"),
                      ("/dev/disk/by-partlabel/", "PARTLABEL")):
        if spec.startswith(prefix):
            key, value = k, spec[len(prefix):]
    key = key.upper()
    if key == "UUID":
        return bool(probe.uuid) and probe.uuid.lower() == value.strip('"').lower()
    if key == "LABEL":
        return bool(probe.label) and probe.label == value.strip('"')
    if key == "PARTUUID":
        return bool(vol.partuuid) and vol.partuuid.lower() == value.strip('"').lower()
    if key == "PARTLABEL":
        return vol.scheme == "gpt" and vol.name == value.strip('"')
    if vol.scheme == "lvm":
        vg, _, lv = vol.name.partition("/")
        mapper = f"/dev/mapper/{vg.replace('-', '--')}-{lv.replace('-', '--')}"
        return spec in (mapper, f"/dev/{vg}/{lv}")
    m = _PARTNUM.match(spec)
    return m is not None and vol.scheme in ("mbr", "gpt") and int(m.group(1)) == vol.number


class MountTree(Filesystem):
    """The root filesystem with others mounted on it: paths go to the longest mount prefix."""

    def __init__(self, root: Filesystem, mounts: dict[str, Filesystem] | None = None) -> None:
        self.root = root
        self.mounts = dict(mounts or {})
        self.fstype = root.fstype

    def _route(self, path: str) -> tuple[Filesystem, str]:
        norm = "/" + "/".join(c for c in path.split("/") if c)
        best = ""
        for mp in self.mounts:
            if (norm == mp or norm.startswith(mp.rstrip("/") + "/")) and len(mp) > len(best):
                best = mp
        if not best:
            return self.root, norm
        return self.mounts[best], norm[len(best.rstrip("/")):] or "/"

    def where(self, path: str) -> str:
        fs, _ = self._route(path)
        for mp, m in self.mounts.items():
            if m is fs:
                return f"{mp} ({fs.fstype})"
        return f"/ ({fs.fstype})"

    def open_file(self, path: str) -> BinaryFile | None:
        fs, rest = self._route(path)
        return fs.open_file(rest)

    def listdir(self, path: str) -> list[str] | None:
        fs, rest = self._route(path)
        return fs.listdir(rest)

    def kind(self, path: str) -> str | None:
        fs, rest = self._route(path)
        return fs.kind(rest)
