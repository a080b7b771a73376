"""Linux rules: is this root filesystem ready to be provisioned by Azure?

Each rule reads a few files through a :class:`Filesystem` (the root with /boot etc. mounted) and
returns findings; passed rules are kept so JUnit lists every rule. Sources: REFERENCE.md
"Pre-flight evidence" and Azure's "Prepare a Linux image" guides.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import PreflightError
from ..report import Finding, Severity
from .cmdline import CmdLine, configured_cmdline, generated_cmdlines
from .fs import Filesystem
from .initramfs import list_initramfs
from .mounts import FstabEntry

DEPROVISION = "waagent -force -deprovision+user && export HISTSIZE=0"
CLOUD_INIT_CLEAN = "cloud-init clean --logs --seed"
MACHINE_ID_FIX = ("truncate -s 0 /etc/machine-id; rm -f /var/lib/dbus/machine-id  "
                  "(waagent -deprovision+user leaves /etc/machine-id set: every VM made from "
                  "the image would share it)")
HV_MODULES = ("hv_vmbus", "hv_storvsc", "hv_netvsc")
HV_CONFIG = {"hv_vmbus": "CONFIG_HYPERV", "hv_storvsc": "CONFIG_HYPERV_STORAGE",
             "hv_netvsc": "CONFIG_HYPERV_NET"}
INITRD_NAMES = ("initrd.img-{v}", "initramfs-{v}.img", "initrd-{v}", "initramfs-{v}")
# Interactive history files, relative to a home directory. Debian (and every distribution)
# ships none, so any of them, even empty, was left by someone who used this system.
HISTORY_FILES = (".bash_history", ".zsh_history", ".history", ".sh_history", ".ash_history",
                 ".local/share/fish/fish_history", ".python_history")
MAX_HOMES = 256  # home directories looked at (/root, /home/*, /etc/passwd)
_KO = re.compile(r"(?:^|/)([a-z0-9_]+)\.ko(?:\.[a-z0-9]+)?$")
AGENT_STATE = re.compile(
    r"^(provisioned|ovf-env\.xml|.*\.(crt|prv|pem|p7m)|Certificates\..*|GoalState\..*"
    r"|SharedConfig\.xml|HostingEnvironmentConfig\.xml|ExtensionsConfig\..*|history|events)$")


@dataclass
class LinuxContext:
    fs: Filesystem  # the root with its fstab mounts
    expect: str = "generalized"
    fstab: list[FstabEntry] = field(default_factory=list)
    swap_volumes: list[str] = field(default_factory=list)  # evidence lines

    @property
    def generalized(self) -> bool:
        return self.expect != "specialized"


Rule = Callable[[LinuxContext], list[Finding]]


def linux_findings(ctx: LinuxContext) -> list[Finding]:
    """Run every rule; a rule that cannot read its files yields a warning, not a crash."""
    out: list[Finding] = []
    for rule in RULES:
        try:
            out.extend(rule(ctx))
        except PreflightError as exc:
            name = rule.__name__.removeprefix("rule_").replace("_", "-")
            out.append(Finding(f"linux.{name}.unreadable", "warning",
                               f"could not evaluate the {name} rule", str(exc)))
    return out


def _ok(fid: str, message: str, evidence: str = "") -> Finding:
    return Finding(fid, "info", message, evidence, passed=True)


def _bad(fid: str, severity: Severity, message: str, evidence: str, fix: str) -> Finding:
    return Finding(fid, severity, message, evidence, fix)


# -- provisioning agent --------------------------------------------------------------------

def _waagent_conf(fs: Filesystem) -> dict[str, str] | None:
    text = fs.read_text("/etc/waagent.conf")
    if text is None:
        return None
    conf = {}
    for line in text.splitlines():
        key, sep, value = line.split("#", 1)[0].partition("=")
        if sep:
            conf[key.strip()] = value.strip()
    return conf


def _agent_version(fs: Filesystem) -> str:
    for lib in ("/usr/lib", "/usr/lib64", "/usr/local/lib"):
        for py in fs.listdir(lib) or []:
            if not py.startswith("python3"):
                continue
            for pkgs in ("dist-packages", "site-packages"):
                text = fs.read_text(f"{lib}/{py}/{pkgs}/azurelinuxagent/common/version.py")
                m = re.search(r"AGENT_VERSION\s*=\s*['\"]([^'\"]+)", text or "")
                if m:
                    return m.group(1)
    return ""


def _cloud_init(fs: Filesystem) -> tuple[bool, str]:
    """(cloud-init installed, datasource evidence); the evidence is "" when Azure is excluded."""
    installed = any(fs.exists(p) for p in ("/usr/bin/cloud-init", "/etc/cloud/cloud.cfg"))
    if not installed:
        return False, ""
    files = ["/etc/cloud/cloud.cfg"] + [
        f"/etc/cloud/cloud.cfg.d/{n}" for n in fs.listdir("/etc/cloud/cloud.cfg.d") or []
        if n.endswith(".cfg")]
    lists: list[str] = []
    for path in files:
        text = fs.read_text(path) or ""
        m = re.search(r"^datasource_list\s*:\s*(\[[^\]]*\]|.*)", text, re.M)
        if m:
            lists.append(f"{path}: datasource_list: {m.group(1).strip()}")
    if not lists:
        return True, "no datasource_list: cloud-init detects Azure itself (ds-identify)"
    last = lists[-1]  # later files override earlier ones
    return True, last if "Azure" in last else ""


def rule_agent(ctx: LinuxContext) -> list[Finding]:
    fs = ctx.fs
    waagent = next((p for p in ("/usr/sbin/waagent", "/usr/bin/waagent", "/usr/local/sbin/waagent")
                    if fs.kind(p) == "file"), "")
    ci_installed, ci_azure = _cloud_init(fs)
    conf = _waagent_conf(fs)
    out: list[Finding] = []
    if not waagent and not ci_azure:
        why = "cloud-init is installed but its datasource_list excludes Azure" \
            if ci_installed else "neither /usr/sbin/waagent nor cloud-init found"
        return [_bad("linux.agent.missing", "error", "no Azure provisioning agent", why,
                     "install WALinuxAgent (apt install walinuxagent | dnf install WALinuxAgent) "
                     "or cloud-init with datasource_list: [ Azure ]")]
    parts = []
    if waagent:
        version = _agent_version(fs)
        parts.append(f"{waagent}" + (f" (WALinuxAgent {version})" if version else ""))
    if ci_azure:
        parts.append(f"cloud-init: {ci_azure}")
    out.append(_ok("linux.agent", "Azure provisioning agent present", "; ".join(parts)))
    if waagent and conf is None:
        out.append(_bad("linux.agent.config", "warning", "waagent is installed without a config",
                        "/etc/waagent.conf: missing", "reinstall WALinuxAgent"))
        return out
    if conf is None:
        out.append(_ok("linux.agent.extensions", "cloud-init only: no VM extensions support",
                       "/usr/sbin/waagent: missing"))
        return out
    out.append(_agent_consistency(conf, ci_azure, ctx.generalized))
    return out


def _agent_consistency(conf: dict[str, str], ci_azure: str, generalized: bool) -> Finding:
    agent = conf.get("Provisioning.Agent", "").lower()
    if not agent:  # older agents: Provisioning.Enabled / Provisioning.UseCloudInit
        enabled = conf.get("Provisioning.Enabled", "y").lower() == "y"
        use_ci = conf.get("Provisioning.UseCloudInit", "n").lower() == "y"
        agent = "cloud-init" if use_ci else ("waagent" if enabled else "disabled")
    ev = f"/etc/waagent.conf: Provisioning.Agent={agent}"
    if ci_azure:
        ev += f"; cloud-init: {ci_azure}"
    if agent == "cloud-init" and not ci_azure:
        return _bad("linux.agent.config", "error",
                    "waagent defers provisioning to cloud-init, which is absent", ev,
                    "install cloud-init, or set Provisioning.Agent=auto in /etc/waagent.conf")
    if agent == "waagent" and ci_azure:
        return _bad("linux.agent.config", "warning",
                    "both waagent and cloud-init would provision", ev,
                    "set Provisioning.Agent=auto (or cloud-init) in /etc/waagent.conf")
    if agent == "disabled" and not ci_azure and generalized:
        return _bad("linux.agent.config", "error",
                    "provisioning is disabled and nothing else provisions", ev,
                    "set Provisioning.Agent=auto in /etc/waagent.conf")
    return _ok("linux.agent.config", "agent configuration is consistent", ev)


# -- Hyper-V drivers -------------------------------------------------------------------------

def _version_key(v: str) -> list[object]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", v)]


def _kernels(fs: Filesystem) -> list[str]:
    boot = fs.listdir("/boot") or []
    found = {n.split("-", 1)[1] for n in boot if re.match(r"^(vmlinuz|vmlinux|kernel)-.", n)}
    if not found:
        found = set(fs.listdir("/lib/modules") or fs.listdir("/usr/lib/modules") or [])
    return sorted(found, key=_version_key)


def _builtin(fs: Filesystem, version: str) -> tuple[set[str], list[str]]:
    found: set[str] = set()
    ev: list[str] = []
    config = fs.read_text(f"/boot/config-{version}") or ""
    for mod, opt in HV_CONFIG.items():
        if re.search(rf"^{opt}=y$", config, re.M):
            found.add(mod)
            ev.append(f"/boot/config-{version}: {opt}=y")
    for base in ("/lib/modules", "/usr/lib/modules"):
        text = fs.read_text(f"{base}/{version}/modules.builtin", 4 << 20)
        if text is None:
            continue
        for mod in HV_MODULES:
            if re.search(rf"/{mod}\.ko$", text, re.M):
                found.add(mod)
                ev.append(f"{base}/{version}/modules.builtin: {mod}")
        break
    return found, ev


def rule_hv_drivers(ctx: LinuxContext) -> list[Finding]:
    fs = ctx.fs
    kernels = _kernels(fs)
    if not kernels:
        return [_bad("linux.hv-drivers", "warning", "no kernel found under /boot",
                     "/boot: no vmlinuz-*", "install a kernel and regenerate the initramfs")]
    version = kernels[-1]  # the newest kernel is the default boot entry
    found, ev = _builtin(fs, version)
    initrd = next((f"/boot/{n.format(v=version)}" for n in INITRD_NAMES
                   if fs.kind(f"/boot/{n.format(v=version)}") == "file"), "")
    if initrd:
        f = fs.open_file(initrd)
        assert f is not None
        hits: dict[str, str] = {}

        def seen(name: str) -> bool:  # stop reading once every driver was seen
            m = _KO.search(name)
            if m and m.group(1) in HV_MODULES:
                hits.setdefault(m.group(1), name)
            return len(hits) == len(HV_MODULES)

        list_initramfs(f, until=seen)
        for mod in HV_MODULES:
            if mod in hits:
                found.add(mod)
                ev.append(f"{initrd}: {hits[mod]}")
    missing = [m for m in HV_MODULES if m not in found]
    where = f"kernel {version}, initramfs {initrd or 'none'}"
    evidence = "; ".join([*ev, f"missing: {', '.join(missing)} ({where})"] if missing else ev)
    fix = ("add hv_vmbus hv_storvsc hv_netvsc to /etc/initramfs-tools/modules and run "
           "update-initramfs -u (dracut: add_drivers+=\" hv_vmbus hv_storvsc hv_netvsc \" "
           "in /etc/dracut.conf.d/hv.conf, then dracut -f --regenerate-all)")
    critical = [m for m in missing if m != "hv_netvsc"]
    if critical:
        return [_bad("linux.hv-drivers", "error",
                     f"Hyper-V drivers missing from the initramfs: {', '.join(missing)}",
                     evidence, fix)]
    if missing:
        return [_bad("linux.hv-drivers", "warning",
                     "hv_netvsc is not in the initramfs (network comes up later)", evidence, fix)]
    return [_ok("linux.hv-drivers", "Hyper-V drivers available at boot", evidence)]


# -- swap ------------------------------------------------------------------------------------

SWAP_FIX = ("remove swap from the OS disk and let the agent create it on the resource disk "
            "(ResourceDisk.EnableSwap=y in /etc/waagent.conf, or cloud-init mounts/swap)")


def rule_swap(ctx: LinuxContext) -> list[Finding]:
    fs = ctx.fs
    out: list[Finding] = []
    entries = [e for e in ctx.fstab if e.fstype == "swap" and "noauto" not in e.options]
    if entries:
        out.append(_bad("linux.swap.fstab", "warning", "swap is enabled in /etc/fstab",
                        "; ".join(e.text for e in entries), SWAP_FIX))
    if ctx.swap_volumes:
        out.append(_bad("linux.swap.partition", "warning", "the OS disk has a swap partition",
                        "; ".join(ctx.swap_volumes), SWAP_FIX))
    files = {e.spec for e in entries if e.spec.startswith("/")
             and not e.spec.startswith("/dev/")} | {"/swapfile", "/swap.img"}
    present = [f"{p} ({fs.file_size(p)} bytes)" for p in sorted(files) if fs.kind(p) == "file"]
    if present:
        out.append(_bad("linux.swap.file", "warning", "a swap file is on the OS disk",
                        "; ".join(present), f"rm the file; {SWAP_FIX}"))
    if not out:
        out.append(_ok("linux.swap", "no swap on the OS disk", "/etc/fstab: no swap entries"))
    return out


# -- module blacklist ------------------------------------------------------------------------

def rule_blacklist(ctx: LinuxContext) -> list[Finding]:
    fs = ctx.fs
    hits: dict[str, list[str]] = {"udf": [], "vfat": []}
    for name in fs.listdir("/etc/modprobe.d") or []:
        path = f"/etc/modprobe.d/{name}"
        for n, line in enumerate((fs.read_text(path) or "").splitlines(), start=1):
            words = line.split("#", 1)[0].split()
            if len(words) >= 2 and words[1] in hits and (
                    words[0] == "blacklist"
                    or (words[0] == "install" and re.search(r"/(true|false)\b", line))):
                hits[words[1]].append(f"{path}:{n}: {line.strip()}")
    out = []
    for mod, ev in hits.items():
        if ev:
            out.append(_bad(f"linux.blacklist.{mod}", "error",
                            f"the {mod} module is disabled; Azure provisioning media needs it",
                            "; ".join(ev), "remove those lines, then rebuild the initramfs"))
        else:
            out.append(_ok(f"linux.blacklist.{mod}", f"{mod} is not blacklisted",
                           "/etc/modprobe.d: no blacklist"))
    return out


# -- kernel command line ---------------------------------------------------------------------

CONSOLE = "console=ttyS0"
RECOMMENDED = ("earlyprintk=ttyS0", "rootdelay=300")


def rule_console(ctx: LinuxContext) -> list[Finding]:
    configured = configured_cmdline(ctx.fs)
    generated = generated_cmdlines(ctx.fs)
    fix = ('add console=ttyS0,115200n8 earlyprintk=ttyS0 rootdelay=300 to GRUB_CMDLINE_LINUX in '
           '/etc/default/grub, then update-grub (or grub2-mkconfig -o /boot/grub2/grub.cfg)')
    effective = generated or ([configured] if configured else [])
    if not effective:
        return [_bad("linux.console", "warning", "no kernel command line found",
                     "no /etc/default/grub, grub.cfg or /boot/loader/entries", fix)]
    lacking = [c for c in effective if not c.find(CONSOLE)]
    if lacking:
        stale = bool(generated) and configured is not None and bool(configured.find(CONSOLE))
        msg = ("console=ttyS0 is in /etc/default/grub but grub.cfg was not regenerated"
               if stale else "console=ttyS0 is missing: no serial console or boot diagnostics")
        return [_bad("linux.console", "warning", msg, _quote(lacking[0]), fix)]
    line = effective[0]
    console = line.find(CONSOLE)
    assert console is not None  # nothing lacks it
    out = [_ok("linux.console", "serial console configured",
               f"{_quote(line)}; {CONSOLE} as {console.text}")]
    missing = [w for w in RECOMMENDED if not line.find(w)]
    if missing:
        out.append(Finding("linux.console.recommended", "info",
                           f"recommended kernel options absent: {' '.join(missing)}",
                           _quote(line), fix))
    return out


def _quote(line: CmdLine) -> str:
    return f"{line.source}: {line.text!r}"


# -- deprovisioning --------------------------------------------------------------------------

def _state(ctx: LinuxContext, fid: str, message: str, evidence: list[str], fix: str,
           severity: Severity = "error", clean: str = "") -> Finding:
    """A deprovisioning rule: leftovers are a problem when generalized, expected otherwise.

    ``clean`` is what a clean system has, when "no <message>" would not read right.
    """
    if not evidence:
        if ctx.generalized:
            return _ok(fid, f"clean: {clean or 'no ' + message}")
        return _ok(fid, clean or f"none: {message}")
    ev = "; ".join(evidence)
    if ctx.generalized:
        return _bad(fid, severity, f"not deprovisioned: {message}", ev, fix)
    return _ok(fid, f"present as expected on a specialized disk: {message}", ev)


def _homes(fs: Filesystem) -> list[str]:
    """/root, every directory in /home, and every other home /etc/passwd names."""
    homes = ["/root"] + [f"/home/{u}" for u in fs.listdir("/home") or []]
    for line in (fs.read_text("/etc/passwd", 1 << 20) or "").splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and fields[5].startswith("/") and fields[5].rstrip("/"):
            homes.append("/" + "/".join(c for c in fields[5].split("/") if c))
    unique = list(dict.fromkeys(homes))[:MAX_HOMES]
    return [h for h in unique if fs.is_dir(h)]


def _deprovision_evidence(fs: Filesystem) -> dict[str, list[str]]:
    ev: dict[str, list[str]] = {}
    state = [n for n in fs.listdir("/var/lib/waagent") or [] if AGENT_STATE.match(n)]
    ev["agent-state"] = [f"/var/lib/waagent/{n}" for n in state]
    ev["ovf-env"] = [p for p in ("/var/lib/waagent/ovf-env.xml",
                                 "/var/lib/cloud/seed/azure/ovf-env.xml") if fs.exists(p)]
    cloud = fs.listdir("/var/lib/cloud") or []
    ci = []
    if "instance" in cloud:
        ci.append("/var/lib/cloud/instance")
    instances = fs.listdir("/var/lib/cloud/instances") or []
    if instances:
        ci.append(f"/var/lib/cloud/instances: {', '.join(instances[:5])}")
    ev["cloud-init"] = ci
    ev["ssh-host-keys"] = [f"/etc/ssh/{n}" for n in fs.listdir("/etc/ssh") or []
                           if re.match(r"^ssh_host_.*_key$", n)]
    mid = []
    for p in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        text = (fs.read_text(p, 4096) or "").strip()
        if text and text != "uninitialized" and fs.kind(p) == "file":
            mid.append(f"{p} = {text[:32]}")
    ev["machine-id"] = mid
    hist = []
    for home in _homes(fs):
        for name in HISTORY_FILES:
            size = fs.file_size(f"{home}/{name}")
            if size is not None:
                hist.append(f"{home}/{name} ({size} bytes)")
    ev["shell-history"] = hist
    ev["persistent-net"] = [p for p in ("/etc/udev/rules.d/70-persistent-net.rules",
                                        "/etc/udev/rules.d/75-persistent-net-generator.rules")
                            if fs.exists(p)]
    return ev


def rule_deprovision(ctx: LinuxContext) -> list[Finding]:
    ev = _deprovision_evidence(ctx.fs)
    d = "linux.deprovision."
    out = [
        _state(ctx, d + "agent-state", "waagent provisioning state", ev["agent-state"],
               DEPROVISION),
        _state(ctx, d + "cloud-init", "cloud-init instance data", ev["cloud-init"],
               CLOUD_INIT_CLEAN),
        _state(ctx, d + "ssh-host-keys", "SSH host keys (every VM would share them)",
               ev["ssh-host-keys"], f"{DEPROVISION}  (or: rm -f /etc/ssh/ssh_host_*)"),
        _state(ctx, d + "machine-id", "machine-id set", ev["machine-id"], MACHINE_ID_FIX,
               "warning", clean="machine-id empty (systemd makes a new one on first boot)"),
        _state(ctx, d + "shell-history", "shell history", ev["shell-history"],
               "rm -f " + " ".join(e.rsplit(" (", 1)[0] for e in ev["shell-history"])
               + " && export HISTSIZE=0  (waagent -deprovision+user removes only "
               "/root/.bash_history)", "warning"),
        _state(ctx, d + "persistent-net", "persistent network rules (NIC renamed on Azure)",
               ev["persistent-net"], "rm -f /etc/udev/rules.d/70-persistent-net.rules"),
    ]
    if ev["ovf-env"]:  # credentials from the last provisioning: never leave them behind
        out.append(_bad(d + "ovf-env", "error" if ctx.generalized else "warning",
                        "leftover ovf-env.xml (may hold provisioning secrets)",
                        "; ".join(ev["ovf-env"]), DEPROVISION))
    else:
        out.append(_ok(d + "ovf-env", "no leftover ovf-env.xml"))
    if not ctx.generalized and not any(ev[k] for k in ("agent-state", "cloud-init",
                                                       "ssh-host-keys", "machine-id")):
        out.append(_bad("linux.expect.specialized", "error",
                        "expected a specialized disk, but it looks deprovisioned",
                        "no agent state, cloud-init instance, SSH host keys or machine-id",
                        "upload it as a generalized image (--expect generalized)"))
    return out


RULES: tuple[Rule, ...] = (rule_agent, rule_hv_drivers, rule_swap, rule_blacklist,
                           rule_console, rule_deprovision)
