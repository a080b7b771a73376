"""Dirty registry hives: the fixture writer's logs checked by regipy (an independent reader and
replayer), and vhdkit's in-memory replay checked against regipy's, byte for byte."""

from __future__ import annotations

import io
import struct
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from regipy.recovery import apply_transaction_logs
from regipy.registry import RegistryHive

from fixtures import windows_disks as wd
from fixtures.hivewriter import (
    BASE_BLOCK,
    dirty_hive,
    dirty_pages,
    log_entry,
    new_format_log,
    with_base_block,
)
from vhdkit.preflight.fs import Filesystem
from vhdkit.preflight.registry import Hive
from vhdkit.preflight.reglog import open_replayed
from vhdkit.preflight.volumes import BinaryFile
from vhdkit.preflight.windows import windows_findings

CDROM = r"ControlSet001\Services\cdrom"
TS = r"ControlSet001\Control\Terminal Server"
GOOD = wd.VARIANTS["generalized"]
STALE = replace(GOOD, starts={"cdrom": 4}, deny_ts=1)


class _File(io.BytesIO):
    def get_size(self) -> int:
        return len(self.getbuffer())


class MemFs(Filesystem):
    """Files held in memory, by path: the smallest Filesystem for hand-made logs."""

    fstype = "mem"

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def open_file(self, path: str) -> BinaryFile | None:
        data = self.files.get(path)
        return None if data is None else _File(data)

    def listdir(self, path: str) -> list[str] | None:
        return None

    def kind(self, path: str) -> str | None:
        return "file" if path in self.files else None


def logs(fmt: str) -> tuple[bytes, bytes, bytes]:
    return dirty_hive(wd.system_tree(STALE), wd.system_tree(GOOD), fmt)


def regipy_value(path: Path, key: str, name: str) -> object:
    return RegistryHive(str(path)).get_key("\\" + key).get_value(name)


@pytest.mark.parametrize("fmt", ["new", "old"])
def test_writer_output_is_what_regipy_replays(tmp_path: Path, fmt: str) -> None:
    primary, log1, _ = logs(fmt)
    (tmp_path / "SYSTEM").write_bytes(primary)
    (tmp_path / "SYSTEM.LOG1").write_bytes(log1)
    hive = RegistryHive(str(tmp_path / "SYSTEM"))
    assert (hive.header.primary_sequence_num, hive.header.secondary_sequence_num) == (41, 40)
    assert regipy_value(tmp_path / "SYSTEM", CDROM, "Start") == 4  # the stale primary
    kind = log1[512:516]
    assert kind == (b"HvLE" if fmt == "new" else b"DIRT")
    restored, pages = apply_transaction_logs(
        str(tmp_path / "SYSTEM"), str(tmp_path / "SYSTEM.LOG1"),
        restored_hive_path=str(tmp_path / "restored"))
    assert pages >= 1
    assert regipy_value(Path(restored), CDROM, "Start") == 1
    assert regipy_value(Path(restored), TS, "fDenyTSConnections") == 0


@pytest.mark.parametrize("fmt", ["new", "old"])
def test_replay_matches_regipy_byte_for_byte(tmp_path: Path, fmt: str) -> None:
    primary, log1, log2 = logs(fmt)
    path = "Windows/System32/config/SYSTEM"
    fs = MemFs({path: primary, path + ".LOG1": log1, path + ".LOG2": log2})
    stream, replay = open_replayed(fs, path, "SYSTEM")
    assert stream is not None and replay is not None and replay.state == "replayed"
    stream.seek(0)
    ours = stream.read(stream.get_size())
    (tmp_path / "SYSTEM").write_bytes(primary)
    (tmp_path / "SYSTEM.LOG1").write_bytes(log1)
    restored, _ = apply_transaction_logs(str(tmp_path / "SYSTEM"), str(tmp_path / "SYSTEM.LOG1"),
                                         restored_hive_path=str(tmp_path / "restored"))
    theirs = Path(restored).read_bytes()
    assert ours[BASE_BLOCK:] == theirs[BASE_BLOCK:]  # every hive bin, after the replay
    seq1, seq2 = struct.unpack_from("<II", ours, 4)
    assert seq1 == seq2  # a clean base block with a valid checksum, as libregf wants
    hive = Hive(io.BytesIO(ours), "SYSTEM")
    assert hive.dword(r"CurrentControlSet\Services\cdrom", "Start") == 1
    assert hive.dword(r"CurrentControlSet\Control\Terminal Server", "fDenyTSConnections") == 0
    # The stale LOG2 (older sequence number, junk in the first page) was not applied.
    assert "LOG2" not in replay.evidence and "SYSTEM.LOG1" in replay.evidence


def test_entries_apply_in_sequence_across_both_logs() -> None:
    """Entry 40 in LOG2 and 41 in LOG1: both apply, in order; a gap stops the replay."""
    old, new = wd.system_tree(STALE).to_bytes(), wd.system_tree(GOOD).to_bytes()
    primary = with_base_block(old, 41, 40) + old[BASE_BLOCK:]
    bins = len(new) - BASE_BLOCK
    page = [(o, new[BASE_BLOCK + o:BASE_BLOCK + o + 4096]) for o in dirty_pages(old, new, 4096)]
    junk = [(0, bytes([0x5A]) * 4096)]
    path = "SYSTEM"
    split = MemFs({path: primary,
                   path + ".LOG2": new_format_log(new, 40, [log_entry(40, bins, page)]),
                   path + ".LOG1": new_format_log(new, 42, [log_entry(41, bins, []),
                                                            log_entry(43, bins, junk)])})
    stream, replay = open_replayed(split, path, "SYSTEM")
    assert replay is not None and replay.state == "replayed"
    assert [a.split(" at ")[0] for a in replay.applied] == ["SYSTEM.LOG2 entry 40",
                                                            "SYSTEM.LOG1 entry 41"]
    assert stream is not None
    hive = Hive(stream, "SYSTEM")  # entry 43 (after the gap at 42) was not applied
    assert hive.dword(r"CurrentControlSet\Services\cdrom", "Start") == 1


@pytest.mark.parametrize("damage", ["truncated", "page-outside-bins", "odd-size", "bad-base"])
def test_malformed_logs_are_not_applied(damage: str) -> None:
    primary, log1, _ = logs("new")
    log = bytearray(log1)
    if damage == "truncated":
        log = log[:700]
    elif damage == "page-outside-bins":
        struct.pack_into("<I", log, 512 + 40, 1 << 30)  # first reference's offset
    elif damage == "odd-size":
        struct.pack_into("<I", log, 512 + 4, 1000)
    else:
        log[0:4] = b"junk"
    fs = MemFs({"SYSTEM": primary, "SYSTEM.LOG1": bytes(log)})
    stream, replay = open_replayed(fs, "SYSTEM", "SYSTEM")
    assert replay is not None and replay.state == "not-replayed", replay
    assert "sequence numbers 41 and 40 differ" in replay.evidence
    assert stream is not None and Hive(stream, "SYSTEM").dword(
        r"CurrentControlSet\Services\cdrom", "Start") == 4  # read as it is


def test_clean_and_missing_states() -> None:
    clean = wd.system_hive(GOOD)
    _, replay = open_replayed(MemFs({"SYSTEM": clean}), "SYSTEM", "SYSTEM")
    assert replay is not None and replay.state == "clean"
    primary, _, _ = logs("new")
    _, replay = open_replayed(MemFs({"SYSTEM": primary}), "SYSTEM", "SYSTEM")
    assert replay is not None and replay.state == "logs-missing"
    assert replay.evidence == ("SYSTEM: sequence numbers 41 and 40 differ; no transaction log "
                               "beside it")


@pytest.mark.parametrize(("variant", "passed"), [("dirty-new-log", True),
                                                 ("dirty-old-log", True),
                                                 ("dirty-logs-missing", False)])
def test_findings_say_dirty_and_replayed_or_logs_missing(tmp_path: Path, variant: str,
                                                        passed: bool) -> None:
    from fixtures.ntfs_image import make_ntfs
    from vhdkit.formats import open_disk
    from vhdkit.preflight.fileview import FileView
    from vhdkit.preflight.ntfs import open_ntfs

    vol = tmp_path / "v.ntfs"
    make_ntfs(str(vol), wd.VOLUME_SIZE, wd.volume_files(wd.VARIANTS[variant]))
    with open_disk(vol) as disk:
        fs = open_ntfs(FileView(disk))
        assert fs is not None
        found = {f.id: f for f in windows_findings(fs)}
    log = found["windows.hive-log.system"]
    assert log.passed is passed
    if passed:
        assert "was dirty: its transaction logs were replayed in memory" in log.message
        assert "SYSTEM.LOG1" in log.evidence
        assert found["windows.cdrom-disabled"].passed
    else:
        assert "dirty and its transaction logs are missing" in log.message and log.fix
        assert not found["windows.cdrom-disabled"].passed


_LOGS = {fmt: logs(fmt) for fmt in ("new", "old")}


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(fmt=st.sampled_from(["new", "old"]), which=st.sampled_from(["LOG1", "LOG2"]),
       edits=st.lists(st.tuples(st.integers(0, 6143), st.integers(0, 255)), min_size=1,
                      max_size=12),
       cut=st.one_of(st.none(), st.integers(0, 6144)))
def test_damaged_logs_never_escape(fmt: str, which: str, edits: list[tuple[int, int]],
                                   cut: int | None) -> None:
    """Any damage to a log: a replay or a refusal, never an exception or a read past the hive."""
    primary, log1, log2 = _LOGS[fmt]
    log = bytearray(log1 if which == "LOG1" else log2)
    for at, value in edits:
        if at < len(log):
            log[at] = value
    if cut is not None:
        del log[cut:]
    files = {"SYSTEM": primary, "SYSTEM.LOG1": log1, "SYSTEM.LOG2": log2}
    files[f"SYSTEM.{which}"] = bytes(log)
    stream, replay = open_replayed(MemFs(files), "SYSTEM", "SYSTEM")
    assert stream is not None and replay is not None
    assert replay.state in ("replayed", "not-replayed")
    size = stream.get_size()
    assert size <= BASE_BLOCK + (1 << 32)
    stream.seek(0)
    assert len(stream.read(min(size, 1 << 20))) == min(size, 1 << 20)
