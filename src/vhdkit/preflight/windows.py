"""Windows readiness rules, judged offline from the system volume and its registry hives.

The rules follow Azure's "prepare a Windows VHD" guidance: generalized by Sysprep to OOBE (or,
with ``expect="specialized"``, not generalized at all), cdrom driver and connectivity services
enabled, RDP allowed, no leftover unattend.xml; recommended settings give warnings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import suppress
from functools import partial

from ..errors import FormatError, PreflightError, UsageError
from ..report import Finding, Severity
from .fs import Filesystem
from .registry import Hive
from .reglog import Replay, open_replayed

SYSTEM_HIVE = "Windows/System32/config/SYSTEM"
SOFTWARE_HIVE = "Windows/System32/config/SOFTWARE"
STATE_INI = "Windows/Setup/State/State.ini"
SYSPREP_TAG = "Windows/System32/Sysprep/Sysprep_succeeded.tag"
UNATTEND_DIRS = ("Windows/System32/Sysprep", "Windows/Panther", "Windows/Panther/Unattend")
UNATTEND_NAMES = frozenset({"unattend.xml", "autounattend.xml"})
STATE_KEY = r"Microsoft\Windows\CurrentVersion\Setup\State"
MAX_INI = 64 << 10

OOBE = "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"
COMPLETE = "IMAGE_STATE_COMPLETE"
SYSPREP = r"%WINDIR%\System32\Sysprep\sysprep.exe /generalize /oobe /shutdown"
CCS = r"HKLM\SYSTEM\CurrentControlSet"

# Why a state other than the expected one is a problem, and what to do about it.
_STATE_PROBLEMS = {
    "IMAGE_STATE_GENERALIZE_RESEAL_TO_AUDIT": (
        "Windows was sealed to audit mode: it boots into Audit mode, not OOBE", SYSPREP),
    "IMAGE_STATE_UNDEPLOYABLE": (
        "Sysprep did not finish (image undeployable)",
        r"read %WINDIR%\System32\Sysprep\Panther\setuperr.log, fix the cause, then run "
        + SYSPREP),
    "IMAGE_STATE_SPECIALIZE_RESEAL_TO_OOBE": (
        "Windows was resealed during specialize: not deployable", SYSPREP),
    "IMAGE_STATE_SPECIALIZE_RESEAL_TO_AUDIT": (
        "Windows was resealed during specialize: not deployable", SYSPREP),
}

# Connectivity services (Azure guidance) -> (severity when disabled, start type to set).
SERVICES: dict[str, tuple[Severity, str]] = {
    "BFE": ("error", "Automatic"), "Dhcp": ("error", "Automatic"),
    "Dnscache": ("error", "Automatic"), "IKEEXT": ("warning", "Automatic"),
    "iphlpsvc": ("warning", "Automatic"), "nsi": ("error", "Automatic"),
    "mpssvc": ("error", "Automatic"), "RemoteRegistry": ("warning", "Automatic"),
    "Netlogon": ("warning", "Manual"), "Netman": ("warning", "Manual"),
    "TermService": ("error", "Manual"),
}
DISABLED = 4


def _ok(rule: str, severity: Severity, message: str, evidence: str) -> Finding:
    return Finding(rule, severity, message, evidence, passed=True)


def _reg_add(key: str, name: str, data: int) -> str:
    return f'reg add "{key}" /v {name} /t REG_DWORD /d {data} /f'


def _shown(value: object) -> str:
    return "absent" if value is None else f'"{value}"' if isinstance(value, str) else str(value)


# -- reading the volume ------------------------------------------------------------------------


def _open_hive(fs: Filesystem, path: str, name: str) -> tuple[Hive | None, Replay | None]:
    """Open the hive as a stream (libregf reads only the cells asked for), with its transaction
    logs replayed in memory when it is dirty."""
    stream, replay = open_replayed(fs, path, name)
    return (None if stream is None else Hive(stream, name)), replay


def _replay_finding(name: str, replay: Replay) -> Finding:
    rule = f"windows.hive-log.{name.lower()}"
    if replay.state == "clean":
        return _ok(rule, "warning", f"the {name} hive is clean (no pending transaction log)",
                   replay.evidence)
    if replay.state == "replayed":
        return _ok(rule, "warning", f"the {name} hive was dirty: its transaction logs were "
                   "replayed in memory before reading", replay.evidence)
    missing = "missing" if replay.state == "logs-missing" else "unusable"
    return Finding(rule, "warning", f"the {name} hive is dirty and its transaction logs are "
                   f"{missing}: recent registry changes may not be seen", replay.evidence,
                   "start the machine once and shut it down cleanly (Windows then writes the "
                   "logs into the hive), and capture the disk again")


def _decode_text(raw: bytes) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16", errors="replace")
    if b"\0" in raw[:64]:
        return raw.decode("utf-16-le", errors="replace")
    return raw.decode("utf-8-sig", errors="replace")


def parse_state_ini(raw: bytes) -> str | None:
    """``ImageState`` of the ``[State]`` section, as Windows writes it (UTF-16 or ASCII)."""
    section = ""
    for line in _decode_text(raw).splitlines():
        line = line.strip().lstrip("\ufeff")
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
        elif section == "state" and "=" in line:
            key, _, value = line.partition("=")
            if key.strip().lower() == "imagestate":
                return value.strip() or None
    return None


# -- generalization ----------------------------------------------------------------------------


def _state_findings(fs: Filesystem, software: Hive | None, expect: str) -> Iterator[Finding]:
    states: dict[str, str] = {}
    raw = fs.read_file(STATE_INI, MAX_INI)
    if raw is not None and (ini := parse_state_ini(raw)):
        states[f"{STATE_INI} [State] ImageState"] = ini
    if software is not None and (reg := software.string(STATE_KEY, "ImageState")):
        states[software.display(STATE_KEY, "ImageState")] = reg
    evidence = "; ".join(f"{where} = {value}" for where, value in states.items())

    if len(set(states.values())) > 1:
        yield Finding(
            "windows.state-mismatch", "error",
            "State.ini and the registry disagree on the image state: Sysprep was interrupted "
            "or the image was changed after it", evidence, SYSPREP)
    elif len(states) == 2:
        yield _ok("windows.state-mismatch", "error",
                  "State.ini and the registry agree", evidence)

    target, rule = (OOBE, "windows.generalized") if expect == "generalized" else (
        COMPLETE, "windows.specialized")
    if not states:
        yield Finding(rule, "error", "no image state found (State.ini and the SOFTWARE hive "
                      "have no ImageState)", f"{STATE_INI}: absent", SYSPREP)
        return
    wrong = [s for s in states.values() if s != target]
    if not wrong:
        yield _ok(rule, "error", f"Windows is {expect} ({target})", evidence)
        return
    state = wrong[-1]  # the registry's value when both are wrong: Setup reads the registry
    if expect == "specialized" and state == OOBE:
        message, fix = ("Windows is generalized but a specialized image was expected",
                        "upload it as a generalized image (--expect generalized)")
    elif state == COMPLETE:
        message, fix = ("Windows is specialized, not generalized: a VM created from it never "
                        "finishes provisioning",
                        f"{SYSPREP} (or upload it as specialized: --expect specialized)")
    elif state in _STATE_PROBLEMS:
        message, fix = _STATE_PROBLEMS[state]
    else:
        message, fix = f"unknown image state {state}", SYSPREP
    yield Finding(rule, "error", message, evidence, fix)


def _sysprep_evidence(fs: Filesystem, system: Hive, expect: str) -> Iterator[Finding]:
    setup_type = system.dword("Setup", "SetupType")
    cmdline = system.string("Setup", "CmdLine")
    pending = setup_type == 2 and "windeploy" in (cmdline or "").lower()
    setup_ev = (f"{system.display('Setup', 'SetupType')} = {_shown(setup_type)}, "
                f"{system.display('Setup', 'CmdLine')} = {_shown(cmdline)}")
    if expect == "specialized":
        if pending:
            yield Finding("windows.setup-pending", "warning",
                          "Windows Setup will run OOBE (windeploy) at next boot, as after a "
                          "generalize", setup_ev)
        return
    if pending:
        yield _ok("windows.setup-pending", "warning", "OOBE (windeploy) runs at next boot",
                  setup_ev)
    else:
        yield Finding("windows.setup-pending", "warning",
                      "Windows Setup is not set to run OOBE at next boot (SetupType 2 with "
                      "windeploy expected after Sysprep)", setup_ev, SYSPREP)
    yield from _sysprep_traces(fs, system)


def _sysprep_traces(fs: Filesystem, system: Hive) -> Iterator[Finding]:
    """Supporting facts, each saying only what its value proves: the verdict rests on ImageState
    (State.ini, SOFTWARE) and SetupType/CmdLine, never on these."""
    status_key = r"Setup\Status\SysprepStatus"
    state = system.dword(status_key, "GeneralizationState")
    status_ev = f"{system.display(status_key, 'GeneralizationState')} = {_shown(state)}"
    if state == 7:
        # 7 is what every installed Windows carries, sysprepped or not: it says Sysprep may
        # run, not that a generalize happened.
        yield _ok("windows.sysprep-status", "info",
                  "SysprepStatus says Sysprep may run on this installation (7 is also the value "
                  "of a never-sysprepped Windows: not evidence of a generalize)", status_ev)
    else:
        yield Finding("windows.sysprep-status", "info",
                      "SysprepStatus GeneralizationState is not 7: Sysprep may refuse to run "
                      "here (this says nothing about the image state)", status_ev,
                      _reg_add(r"HKLM\SYSTEM\Setup\Status\SysprepStatus",
                               "GeneralizationState", 7) + " before running Sysprep")
    if fs.exists(SYSPREP_TAG):
        yield _ok("windows.sysprep-tag", "info",
                  "Sysprep_succeeded.tag present: some Sysprep run succeeded on this "
                  "installation (not necessarily the last one, nor a generalize)", SYSPREP_TAG)
    else:
        yield Finding("windows.sysprep-tag", "info",
                      "Sysprep_succeeded.tag not found: no trace of a successful Sysprep run "
                      "(the file may have been deleted)", f"{SYSPREP_TAG}: absent")


def _unattend(fs: Filesystem, expect: str) -> Iterator[Finding]:
    found = []
    for folder in UNATTEND_DIRS:
        for name in fs.listdir(folder) or []:
            if name.lower() in UNATTEND_NAMES:
                path = f"{folder}/{name}"
                found.append(f"{path} ({fs.file_size(path)} bytes)")
    if not found:
        yield _ok("windows.unattend", "error", "no custom unattend.xml",
                  ", ".join(UNATTEND_DIRS) + ": none")
        return
    yield Finding(
        "windows.unattend", "error" if expect == "generalized" else "warning",
        "a custom answer file is left behind: Azure provides its own to OOBE",
        "; ".join(found),
        "delete " + ", ".join(f.split(" (")[0].replace("/", "\\") for f in found)
        + " and run Sysprep without /unattend")


# -- SYSTEM hive rules -------------------------------------------------------------------------


def _cdrom(system: Hive) -> Iterator[Finding]:
    key = r"CurrentControlSet\Services\cdrom"
    start = system.dword(key, "Start")
    ev = f"{system.display(key, 'Start')} = {_shown(start)}"
    if start == DISABLED:
        yield Finding("windows.cdrom-disabled", "error",
                      "the cdrom driver is disabled: Azure passes provisioning data on a "
                      "virtual DVD", ev, _reg_add(rf"{CCS}\Services\cdrom", "Start", 1))
    else:
        yield _ok("windows.cdrom-disabled", "error", "the cdrom driver is enabled", ev)


def _rdp(system: Hive) -> Iterator[Finding]:
    key = r"CurrentControlSet\Control\Terminal Server"
    deny = system.dword(key, "fDenyTSConnections")
    ev = f"{system.display(key, 'fDenyTSConnections')} = {_shown(deny)}"
    fix = _reg_add(rf"{CCS}\Control\Terminal Server", "fDenyTSConnections", 0)
    if deny == 0:
        yield _ok("windows.rdp-denied", "error", "Remote Desktop connections are allowed", ev)
    else:
        yield Finding("windows.rdp-denied", "error",
                      "Remote Desktop connections are denied: the VM cannot be reached", ev, fix)
    port_key = rf"{key}\WinStations\RDP-Tcp"
    port = system.dword(port_key, "PortNumber")
    ev = f"{system.display(port_key, 'PortNumber')} = {_shown(port)}"
    if port in (None, 3389):
        yield _ok("windows.rdp-port", "warning", "RDP listens on port 3389", ev)
    else:
        yield Finding("windows.rdp-port", "warning",
                      f"RDP listens on port {port}, not 3389: network rules must allow it", ev,
                      _reg_add(rf"{CCS}\Control\Terminal Server\WinStations\RDP-Tcp",
                               "PortNumber", 3389))


def _services(system: Hive) -> Iterator[Finding]:
    for name, (severity, start_type) in SERVICES.items():
        key = rf"CurrentControlSet\Services\{name}"
        start = system.dword(key, "Start")
        rule = f"windows.service-disabled.{name}"
        ev = f"{system.display(key, 'Start')} = {_shown(start)}"
        if start == DISABLED:
            yield Finding(rule, severity, f"service {name} is disabled", ev,
                          f"Set-Service -Name {name} -StartupType {start_type}")
        else:
            yield _ok(rule, severity, f"service {name} is not disabled", ev)


def _dword_is_one(system: Hive, key: str, name: str, rule: str, ok: str,
                  bad: str) -> Finding:
    """A recommended setting that is right when the DWORD ``name`` under ``key`` is 1."""
    value = system.dword(key, name)
    ev = f"{system.display(key, name)} = {_shown(value)}"
    if value == 1:
        return _ok(rule, "warning", ok, ev)
    full = CCS + key.removeprefix("CurrentControlSet")
    return Finding(rule, "warning", bad, ev, _reg_add(full, name, 1))


def _recommended(system: Hive) -> Iterator[Finding]:
    yield _dword_is_one(system, r"CurrentControlSet\Services\partmgr\Parameters", "SanPolicy",
                        "windows.san-policy", "SAN policy is Online All",
                        "SAN policy is not Online All (1): attached data disks may stay offline")
    yield _dword_is_one(system, r"CurrentControlSet\Control\TimeZoneInformation",
                        "RealTimeIsUniversal", "windows.realtime-utc",
                        "the hardware clock is read as UTC",
                        "RealTimeIsUniversal is not 1: the clock is off by the time zone offset")

    agents = [n for n in ("WindowsAzureGuestAgent", "RdAgent")
              if system.has_key(rf"CurrentControlSet\Services\{n}")]
    ev = system.display(r"CurrentControlSet\Services") + "\\{WindowsAzureGuestAgent,RdAgent}: "
    if agents:
        yield _ok("windows.vm-agent", "warning", "the Azure VM agent is installed",
                  ev + ", ".join(agents))
    else:
        yield Finding("windows.vm-agent", "warning",
                      "the Azure VM agent is not installed (extensions and password reset "
                      "will not work)", ev + "absent",
                      "install WindowsAzureVmAgent.msi (https://go.microsoft.com/fwlink/"
                      "?LinkID=394789) before running Sysprep")

    key = r"CurrentControlSet\Services\Tcpip\Parameters\Interfaces"
    paths = {n: key + "\\" + n for n in system.subkeys(key) or []}
    states = {n: system.dword(p, "EnableDHCP") for n, p in paths.items()}
    ev = "; ".join(f"{system.display(paths[n], 'EnableDHCP')} = {_shown(v)}"
                   for n, v in states.items()) or f"{system.display(key)}: no interfaces"
    if not states or any(v == 1 for v in states.values()):
        yield _ok("windows.dhcp", "warning", "network interfaces use DHCP", ev)
    else:
        yield Finding("windows.dhcp", "warning",
                      "no network interface uses DHCP: Azure assigns addresses by DHCP", ev,
                      'Set-NetIPInterface -InterfaceAlias "Ethernet" -Dhcp Enabled')


def _os_facts(software: Hive) -> Iterator[Finding]:
    key = r"Microsoft\Windows NT\CurrentVersion"
    product = software.string(key, "ProductName")
    build = software.string(key, "CurrentBuild")
    yield _ok("windows.os", "info", f"{product or 'Windows'} (build {build or 'unknown'})",
              f"{software.display(key, 'ProductName')} = {_shown(product)}")


# -- entry point -------------------------------------------------------------------------------


def _problem(exc: Exception) -> str:
    return exc.problem if isinstance(exc, FormatError) else str(exc)


def _where(exc: Exception) -> str:
    return exc.field if isinstance(exc, FormatError) else ""


def _guarded(rule: str, what: str, fn: Callable[[], Iterator[Finding]]) -> list[Finding]:
    """Run one rule group; a corrupt hive or volume becomes a finding, not a traceback."""
    try:
        return list(fn())
    except (FormatError, PreflightError) as exc:
        return [Finding(rule, "error", f"{what} cannot be read: {_problem(exc)}",
                        _where(exc), "repair the image on its source machine and export it again")]


def _hive_or_finding(fs: Filesystem, path: str, name: str,
                     out: list[Finding]) -> Hive | None:
    rule = f"windows.hive.{name.lower()}"
    try:
        hive, replay = _open_hive(fs, path, name)
    except (FormatError, PreflightError) as exc:
        out.append(Finding(rule, "error", f"the {name} hive cannot be read: {_problem(exc)}",
                           f"{path}: {exc}", "repair the image on its source machine"))
        return None
    if hive is None:
        out.append(Finding(rule, "error", f"the {name} hive is missing", f"{path}: absent"))
    elif replay is not None:
        out.append(_replay_finding(name, replay))
    return hive


def windows_findings(fs: Filesystem, expect: str = "generalized") -> list[Finding]:
    """Judge the Windows installation on ``fs`` (an NTFS volume holding ``Windows/``)."""
    if expect not in ("generalized", "specialized"):
        raise UsageError(f"expect must be 'generalized' or 'specialized', not {expect!r}")
    out: list[Finding] = []
    system = _hive_or_finding(fs, SYSTEM_HIVE, "SYSTEM", out)
    software = _hive_or_finding(fs, SOFTWARE_HIVE, "SOFTWARE", out)
    if software is not None:
        out += _guarded("windows.hive.software", "the SOFTWARE hive",
                        lambda: _os_facts(software))
    out += _guarded("windows.generalized", "the image state (SOFTWARE hive, State.ini)",
                    lambda: _state_findings(fs, software, expect))
    if system is not None:
        out += _guarded("windows.hive.system", "the SYSTEM hive",
                        lambda: _sysprep_evidence(fs, system, expect))
        out += _system_rules(system)
    out += _guarded("windows.unattend", "the Windows volume", lambda: _unattend(fs, expect))
    for hive in (system, software):
        if hive is not None:
            with suppress(OSError):
                hive.close()
    return _first_of_each(out)


def _first_of_each(findings: list[Finding]) -> list[Finding]:
    """One finding per id: a hive corrupt in several places is reported once."""
    seen: set[str] = set()
    out = []
    for f in findings:
        if f.id not in seen:
            seen.add(f.id)
            out.append(f)
    return out


def _system_rules(system: Hive) -> list[Finding]:
    try:
        system.resolve("CurrentControlSet")
    except FormatError as exc:
        return [Finding("windows.control-set", "error",
                        "cannot tell which control set is current", str(exc),
                        "repair the image on its source machine")]
    out: list[Finding] = []
    for group in (_cdrom, _rdp, _services, _recommended):
        out += _guarded("windows.hive.system", "the SYSTEM hive", partial(group, system))
    return out
