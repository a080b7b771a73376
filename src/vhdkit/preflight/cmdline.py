"""Kernel command lines: where a Linux system keeps them, and the parameters they hold.

Options are compared as parameters, not as words: ``console=ttyS0,115200n8`` is a serial console
on ttyS0 just like ``console=ttyS0``, and ``earlyprintk=ttyS0,115200`` is ``earlyprintk=ttyS0``.
/etc/default/grub (and /etc/default/grub.d/*.cfg, which grub-mkconfig sources after it) is shell:
its values are read with shell quoting and ``$VAR`` expansion of earlier assignments. grub.cfg
``linux`` lines and Boot Loader Specification entries' ``options`` are the generated lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .fs import Filesystem

GRUB_KEYS = ("GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT")
MAX_GRUB_D = 64  # /etc/default/grub.d/*.cfg files read at most
MAX_BLS = 64  # BLS entries read at most
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=")
_BREAK = " \t\r\n;&|()<>"


@dataclass(frozen=True)
class Param:
    name: str  # as the kernel compares it: '-' and '_' are the same
    value: str | None  # None for a bare flag ("quiet")
    text: str  # as written

    @property
    def device(self) -> str | None:
        """The device a console-like option names: its value up to the first comma."""
        if self.value is None:
            return None
        parts = self.value.split(",")
        if self.name == "earlyprintk" and parts[0] == "serial":
            # earlyprintk=serial[,ttySn|,port][,baud]: plain "serial" is the first port
            parts = parts[1:]
            return parts[0] if parts and parts[0].startswith("ttyS") else "ttyS0"
        return parts[0]


@dataclass
class CmdLine:
    source: str  # where it was read ("/boot/grub/grub.cfg")
    text: str
    params: list[Param] = field(default_factory=list)

    def find(self, want: str) -> Param | None:
        """The parameter that satisfies ``want`` ("console=ttyS0", "rootdelay=300", "quiet")."""
        w = parse_cmdline(want)[0]
        for p in self.params:
            if p.name != w.name:
                continue
            if w.value is None:
                return p
            if w.value.isdigit() and (p.value or "").isdigit():
                if int(p.value or 0) >= int(w.value):  # rootdelay=600 is at least 300
                    return p
            elif p.device == w.device:
                return p
        return None


def parse_cmdline(text: str) -> list[Param]:
    """Split like the kernel: whitespace outside double quotes; quotes are removed."""
    out: list[Param] = []
    for m in re.finditer(r'(?:"[^"]*"?|[^\s"])+', text):
        word = m.group(0)
        name, eq, value = word.partition("=")
        name = name.replace('"', "").replace("-", "_")
        out.append(Param(name, value.replace('"', "") if eq else None, word))
    return out


def shell_assignments(text: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """The variables a shell fragment like /etc/default/grub assigns (no commands are run).

    Quoting and ``$VAR``/``${VAR}`` expansion follow the shell; command substitutions expand to
    nothing; conditionals are not evaluated (every assignment counts, in order).
    """
    env = dict(env or {})
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _BREAK:
            i += 1
            continue
        if c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        m = _ASSIGN.match(text, i)
        if m:
            value, i = _word(text, m.end(), env)
            env[m.group(1)] = value
        else:
            _, i = _word(text, i, env)
    return env


def _word(text: str, i: int, env: dict[str, str]) -> tuple[str, int]:
    """One shell word from ``i``: (its expanded value, the index after it)."""
    out: list[str] = []
    n = len(text)
    while i < n and text[i] not in _BREAK:
        c = text[i]
        if c == "\\":
            if i + 1 < n and text[i + 1] != "\n":
                out.append(text[i + 1])
            i += 2
        elif c == "'":
            end = text.find("'", i + 1)
            end = n if end < 0 else end
            out.append(text[i + 1:end])
            i = end + 1
        elif c == '"':
            i = _double_quoted(text, i + 1, env, out)
        elif c == "$":
            i = _expand(text, i, env, out)
        elif c == "`":
            end = text.find("`", i + 1)
            i = n if end < 0 else end + 1
        else:
            out.append(c)
            i += 1
    return "".join(out), i


def _double_quoted(text: str, i: int, env: dict[str, str], out: list[str]) -> int:
    n = len(text)
    while i < n and text[i] != '"':
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in '"\\$`\n':
            if text[i + 1] != "\n":
                out.append(text[i + 1])
            i += 2
        elif c == "$":
            i = _expand(text, i, env, out)
        elif c == "`":
            end = text.find("`", i + 1)
            i = n if end < 0 else end + 1
        else:
            out.append(c)
            i += 1
    return i + 1


def _expand(text: str, i: int, env: dict[str, str], out: list[str]) -> int:
    """Expand ``$NAME``, ``${NAME}`` or skip ``$(...)``; ``i`` is the index of the '$'."""
    nxt = text[i + 1:i + 2]
    if nxt == "{":
        end = text.find("}", i + 2)
        end = len(text) if end < 0 else end
        name = text[i + 2:end]
        out.append(env.get(name, "") if _NAME.fullmatch(name) else "")
        return end + 1
    if nxt == "(":  # a command substitution: skipped, quotes and nesting respected
        depth, j = 0, i + 1
        while j < len(text):
            c = text[j]
            if c in "'\"":
                end = text.find(c, j + 1)
                j = len(text) if end < 0 else end + 1
                continue
            depth += {"(": 1, ")": -1}.get(c, 0)
            j += 1
            if depth == 0:
                break
        return j
    m = _NAME.match(text, i + 1)
    if m:
        out.append(env.get(m.group(0), ""))
        return m.end()
    out.append("$")
    return i + 1


def _line(source: str, text: str) -> CmdLine:
    text = " ".join(text.split())
    return CmdLine(source, text, parse_cmdline(text))


def configured_cmdline(fs: Filesystem) -> CmdLine | None:
    """What update-grub would put on the default entry's line (from /etc/default/grub[.d])."""
    drop_ins = [f"/etc/default/grub.d/{n}" for n in sorted(fs.listdir("/etc/default/grub.d") or [])
                if n.endswith(".cfg")]
    files = ["/etc/default/grub", *drop_ins[:MAX_GRUB_D]]
    env: dict[str, str] = {}
    used: list[str] = []
    for path in files:
        text = fs.read_text(path)
        if text is None:
            continue
        before = {k: env.get(k) for k in GRUB_KEYS}
        env = shell_assignments(text, env)
        if any(env.get(k) != before[k] for k in GRUB_KEYS):
            used.append(path)
    if not used:
        return None
    joined = " ".join(env.get(k, "") for k in GRUB_KEYS)
    return _line(f"{', '.join(used)} ({' + '.join(GRUB_KEYS)})", joined)


def generated_cmdlines(fs: Filesystem) -> list[CmdLine]:
    """The default grub.cfg entry's ``linux`` line, and every BLS entry's ``options``."""
    env = fs.read_text("/boot/grub2/grubenv") or fs.read_text("/boot/grub/grubenv") or ""
    m = re.search(r"^kernelopts=(.*)$", env, re.M)
    kernelopts = m.group(1) if m else ""
    out: list[CmdLine] = []
    for path in ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg"):
        for line in (fs.read_text(path, 4 << 20) or "").splitlines():
            m = re.match(r"\s*linux(?:efi|16)?\s+\S+\s*(.*)$", line)
            if m:
                out.append(_line(path, m.group(1).replace("$kernelopts", kernelopts)))
                break  # the first entry is the default
    names = sorted(fs.listdir("/boot/loader/entries") or [], reverse=True)
    for name in [n for n in names if n.endswith(".conf")][:MAX_BLS]:
        text = fs.read_text(f"/boot/loader/entries/{name}") or ""
        m = re.search(r"^options[ \t]+(.*)$", text, re.M)
        if m:
            out.append(_line(f"/boot/loader/entries/{name}",
                             m.group(1).replace("$kernelopts", kernelopts)))
    return out
