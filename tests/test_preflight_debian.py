"""Linux pre-flight against real Debian files: disks built from Debian's own packages.

The packages (waagent, cloud-init, the cloud kernel, base-files, base-passwd, grub2-common) are
fetched once with apt-get download and cached (fixtures/debian_pkgs.py); the initramfs is made
from the kernel's real modules (fixtures/debian_disks.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures import debian_disks as dd
from fixtures import debian_pkgs, qemu
from vhdkit.formats import open_disk
from vhdkit.preflight import preflight_disk
from vhdkit.preflight.cmdline import CmdLine, parse_cmdline, shell_assignments
from vhdkit.report import Finding, Report

# variant -> failing linux.* findings by severity, with --expect generalized
EXPECTED: dict[str, dict[str, set[str]]] = {
    "debian-azure": {},
    "debian-waagent-only": {"error": {"linux.agent.config"}},
    "debian-cloud-init-no-azure": {"error": {"linux.agent.missing"}},
    "debian-modules-dep": {"error": {"linux.hv-drivers"}},
    "debian-used": {
        "error": {"linux.deprovision.agent-state", "linux.deprovision.cloud-init",
                  "linux.deprovision.ssh-host-keys", "linux.deprovision.persistent-net",
                  "linux.deprovision.ovf-env", "linux.blacklist.udf"},
        "warning": {"linux.deprovision.machine-id", "linux.deprovision.shell-history",
                    "linux.swap.fstab", "linux.swap.file", "linux.console"}},
    "debian-agent-deprovisioned": {
        "warning": {"linux.deprovision.machine-id", "linux.deprovision.shell-history"}},
    "debian-defaults": {"warning": {"linux.console"}},
    "debian-azure-btrfs": {},
}

_built: dict[str, Report] = {}


@pytest.fixture(scope="session")
def debian_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("debian-disks")


def report(debian_dir: Path, name: str, expect: str = "generalized") -> Report:
    key = f"{name}/{expect}"
    if key not in _built:
        path = debian_dir / f"{name}.raw"
        if not path.exists():
            dd.build(name, debian_dir)
        with open_disk(path) as disk:
            _built[key] = preflight_disk(disk, expect)
    return _built[key]


def by_id(rep: Report) -> dict[str, Finding]:
    return {f.id: f for f in rep.findings}


def failing(rep: Report) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in rep.problems:
        if f.id.startswith("linux."):
            out.setdefault(f.severity, set()).add(f.id)
    return out


@pytest.mark.parametrize("name", list(EXPECTED))
def test_real_debian_verdicts(debian_dir: Path, name: str) -> None:
    rep = report(debian_dir, name)
    assert failing(rep) == EXPECTED[name], [str(f) for f in rep.problems]
    assert rep.facts["os"] == "linux"
    assert rep.facts["distro"] == "Debian GNU/Linux 12 (bookworm)"  # base-files' os-release
    for f in rep.problems:
        assert f.evidence and f.fix, f


def test_real_agent_files_are_read(debian_dir: Path) -> None:
    """waagent's own version.py and waagent.conf (Provisioning.Agent=cloud-init on Debian)."""
    upstream = debian_pkgs.fetch("waagent").version.split("-")[0]
    ok = by_id(report(debian_dir, "debian-azure"))
    assert ok["linux.agent"].evidence.startswith(f"/usr/sbin/waagent (WALinuxAgent {upstream})")
    assert "cloud-init detects Azure itself" in ok["linux.agent"].evidence  # real cloud.cfg
    assert "Provisioning.Agent=cloud-init" in ok["linux.agent.config"].evidence
    alone = by_id(report(debian_dir, "debian-waagent-only"))["linux.agent.config"]
    assert alone.message == "waagent defers provisioning to cloud-init, which is absent"
    missing = by_id(report(debian_dir, "debian-cloud-init-no-azure"))["linux.agent.missing"]
    assert missing.evidence == "cloud-init is installed but its datasource_list excludes Azure"
    ci_only = by_id(report(debian_dir, "debian-defaults"))
    assert ci_only["linux.agent"].evidence.startswith("cloud-init: no datasource_list")
    assert ci_only["linux.agent.extensions"].passed
    assert ci_only["linux.agent.extensions"].message == ("cloud-init only: no VM extensions "
                                                         "support")


def test_real_system_on_btrfs_reads_like_on_ext4(debian_dir: Path) -> None:
    """The same real files on Btrfs, config-* zstd-, modules.order lzo- and modules.builtin
    zlib-compressed: the same evidence, through vhdkit's own Btrfs reader."""
    ext4, btrfs = report(debian_dir, "debian-azure"), report(debian_dir, "debian-azure-btrfs")
    assert btrfs.facts["root"] == "gpt partition 1 (linux), btrfs"
    assert [(f.id, f.passed, f.evidence) for f in btrfs.findings] == \
        [(f.id, f.passed, f.evidence) for f in ext4.findings]


def test_real_kernel_and_initramfs(debian_dir: Path) -> None:
    version = next((debian_pkgs.kernel().tree / "lib/modules").iterdir()).name
    hv = by_id(report(debian_dir, "debian-azure"))["linux.hv-drivers"]
    assert hv.passed
    assert (f"/boot/initrd.img-{version}: usr/lib/modules/{version}/kernel/drivers/scsi/"
            "hv_storvsc.ko") in hv.evidence
    dep = by_id(report(debian_dir, "debian-modules-dep"))["linux.hv-drivers"]
    assert dep.severity == "error"
    assert dep.message == ("Hyper-V drivers missing from the initramfs: "
                           "hv_vmbus, hv_storvsc, hv_netvsc")
    assert f"kernel {version}, initramfs /boot/initrd.img-{version}" in dep.evidence


def test_initramfs_holds_the_real_modules_and_their_dependencies() -> None:
    kernel = debian_pkgs.kernel()
    moddir = next((kernel.tree / "lib/modules").iterdir())
    mods = dd.module_closure(moddir, ("hv_storvsc",))
    # hv_storvsc's own modinfo names what it needs; the closure follows it.
    assert {"hv_storvsc", "hv_vmbus", "scsi_transport_fc"} <= set(mods)
    assert mods["hv_storvsc"] == "kernel/drivers/scsi/hv_storvsc.ko"
    assert (moddir / mods["hv_vmbus"]).read_bytes()[:4] == b"\x7fELF"


def test_any_shell_history_is_leftover(debian_dir: Path) -> None:
    """Issue 17: a 23-byte /root/.bash_history was reported clean; zsh and fish too."""
    hist = by_id(report(debian_dir, "debian-used"))["linux.deprovision.shell-history"]
    assert hist.severity == "warning" and not hist.passed
    assert f"/root/.bash_history ({len(dd.ISSUE_HISTORY)} bytes)" in hist.evidence
    assert "/home/debian/.zsh_history" in hist.evidence
    # a home that only /etc/passwd names, and fish's history below it
    assert "/srv/builder/.local/share/fish/fish_history" in hist.evidence
    assert hist.fix.startswith("rm -f /root/.bash_history /home/debian/.zsh_history "
                               "/srv/builder/.local/share/fish/fish_history")
    clean = by_id(report(debian_dir, "debian-azure"))["linux.deprovision.shell-history"]
    assert clean.passed and clean.message == "clean: no shell history"


def test_machine_id_messages_and_agent_deprovision(debian_dir: Path) -> None:
    clean = by_id(report(debian_dir, "debian-azure"))["linux.deprovision.machine-id"]
    assert clean.passed and "set" not in clean.message
    assert clean.message.startswith("clean: machine-id empty")
    # what `waagent -deprovision+user` 2.7.3 leaves: machine-id (and other users' history)
    left = by_id(report(debian_dir, "debian-agent-deprovisioned"))
    mid = left["linux.deprovision.machine-id"]
    assert mid.severity == "warning" and not mid.passed
    assert "/etc/machine-id = 9c3b4a1e0d2f4e6a8b7c5d3e1f0a2b4c" in mid.evidence
    assert "truncate -s 0 /etc/machine-id" in mid.fix
    assert "waagent -deprovision+user leaves /etc/machine-id set" in mid.fix
    assert left["linux.deprovision.ssh-host-keys"].passed


def test_kernel_options_with_values_are_recognised(debian_dir: Path) -> None:
    """Issue 17: earlyprintk=ttyS0,115200 is earlyprintk=ttyS0, in every place it is kept."""
    for name, where in (("debian-azure", "/boot/grub/grub.cfg"),
                        ("debian-waagent-only", "/boot/loader/entries/"),
                        ("debian-agent-deprovisioned", "/etc/default/grub.d/50-azure.cfg")):
        found = by_id(report(debian_dir, name))
        assert found["linux.console"].passed, name
        assert where in found["linux.console"].evidence, name
        assert "linux.console.recommended" not in found, (name, found.get(
            "linux.console.recommended"))
    grub = by_id(report(debian_dir, "debian-azure"))["linux.console"]
    assert grub.evidence.endswith("console=ttyS0 as console=ttyS0,115200n8")


def test_console_missing_and_stale(debian_dir: Path) -> None:
    default = by_id(report(debian_dir, "debian-defaults"))["linux.console"]
    assert default.message == "console=ttyS0 is missing: no serial console or boot diagnostics"
    assert "'root=UUID=" in default.evidence and "ro quiet'" in default.evidence
    stale = by_id(report(debian_dir, "debian-used"))["linux.console"]
    assert stale.message == ("console=ttyS0 is in /etc/default/grub but grub.cfg was not "
                             "regenerated")


def test_swap_and_blacklist_on_a_real_system(debian_dir: Path) -> None:
    found = by_id(report(debian_dir, "debian-used"))
    assert "/etc/fstab line 3: /swapfile none swap" in found["linux.swap.fstab"].evidence
    assert found["linux.swap.file"].evidence == "/swapfile (4096 bytes)"
    assert "/etc/modprobe.d/CIS.conf:1: install udf /bin/true" in \
        found["linux.blacklist.udf"].evidence
    assert found["linux.blacklist.vfat"].passed


def test_specialized_real_system(debian_dir: Path) -> None:
    rep = report(debian_dir, "debian-used", "specialized")
    assert failing(rep) == {"error": {"linux.blacklist.udf"},
                            "warning": {"linux.deprovision.ovf-env", "linux.swap.fstab",
                                        "linux.swap.file", "linux.console"}}
    assert "linux.expect.specialized" not in by_id(rep)
    clean = report(debian_dir, "debian-azure", "specialized")
    assert failing(clean) == {"error": {"linux.expect.specialized"}}


def test_vhd_and_vhdx_wraps_give_the_same_verdict(debian_dir: Path, tmp_path: Path) -> None:
    want = report(debian_dir, "debian-used")
    for fmt, opts in (("vpc", ("subformat=dynamic",)), ("vhdx", ())):
        wrapped = qemu.convert(debian_dir / "debian-used.raw", "raw", tmp_path / f"d.{fmt}",
                               fmt, *opts)
        with open_disk(wrapped) as disk:
            got = preflight_disk(disk)
        assert [(f.id, f.severity, f.evidence) for f in got.problems] == \
            [(f.id, f.severity, f.evidence) for f in want.problems]


# -- the command line, piece by piece --------------------------------------------------------

@pytest.mark.parametrize(("line", "want", "hit"), [
    ("console=ttyS0,115200n8", "console=ttyS0", "console=ttyS0,115200n8"),
    ("console=tty1 console=ttyS0", "console=ttyS0", "console=ttyS0"),
    ("console=ttyS1,115200", "console=ttyS0", None),
    ("console=ttyS01", "console=ttyS0", None),
    ("earlyprintk=ttyS0,115200", "earlyprintk=ttyS0", "earlyprintk=ttyS0,115200"),
    ("earlyprintk=serial,ttyS0,115200", "earlyprintk=ttyS0", "earlyprintk=serial,ttyS0,115200"),
    ("earlyprintk=serial", "earlyprintk=ttyS0", "earlyprintk=serial"),
    ("earlyprintk=vga", "earlyprintk=ttyS0", None),
    ("rootdelay=300", "rootdelay=300", "rootdelay=300"),
    ("rootdelay=600", "rootdelay=300", "rootdelay=600"),
    ("rootdelay=30", "rootdelay=300", None),
    ("root_delay=300", "rootdelay=300", None),
    ('quiet "console=ttyS0,115200"', "console=ttyS0", '"console=ttyS0,115200"'),
    ('dyndbg="file x.c +p" console=ttyS0', "console=ttyS0", "console=ttyS0"),
    ("no-kvmclock", "no_kvmclock", "no-kvmclock"),
])
def test_parameters_match_by_name_and_device(line: str, want: str, hit: str | None) -> None:
    got = CmdLine("test", line, parse_cmdline(line)).find(want)
    assert (got.text if got else None) == hit


def test_shell_assignments_follow_quoting_and_expansion() -> None:
    text = (
        'GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`\n'
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet"   # comment\n'
        "GRUB_CMDLINE_LINUX='console=ttyS0,115200n8 $NOT'\n"
        'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX earlyprintk=ttyS0 \\\n rootdelay=300"\n'
        'export GRUB_CMDLINE_LINUX="${GRUB_CMDLINE_LINUX} a=\\"b c\\""\n'
        'X=$(echo "no)") Y=unquoted\\ word # trailing\n'
        '#GRUB_CMDLINE_LINUX="commented"\n'
    )
    env = shell_assignments(text)
    assert env["GRUB_DISTRIBUTOR"] == ""
    assert env["GRUB_CMDLINE_LINUX_DEFAULT"] == "quiet"
    assert env["GRUB_CMDLINE_LINUX"] == ('console=ttyS0,115200n8 $NOT earlyprintk=ttyS0 '
                                         ' rootdelay=300 a="b c"')
    assert env["X"] == "" and env["Y"] == "unquoted word"
    assert shell_assignments('A="unterminated\nB=2') == {"A": "unterminated\nB=2"}
