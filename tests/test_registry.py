"""Registry hives: the fixture writer round-trips through libregf, and the reader fails cleanly."""

from __future__ import annotations

import io
import struct

import pyregf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.hivewriter import BIG_DATA_SEGMENT, Hive, ListKind, Value, checksum
from vhdkit.errors import FormatError
from vhdkit.preflight import registry
from vhdkit.preflight.registry import Hive as Reader

KINDS: list[ListKind] = ["lh", "lf", "li", "ri"]


def _sample(kind: ListKind = "lh") -> Hive:
    hive = Hive(list_kind=kind)
    hive.set("Select", "Current", 2)
    hive.set(r"ControlSet001\Services\cdrom", "Start", 4)  # stale set: must not be read
    svc = r"ControlSet002\Services\cdrom"
    hive.set(svc, "Start", 1)
    hive.set(svc, "ImagePath", Value.expand_sz(r"%SystemRoot%\System32\drivers\cdrom.sys"))
    hive.set(svc, "DependOnService", ["Disk", "Événement"])
    hive.set(svc, "DisplayName", "CD-ROM Driver")
    hive.set(svc, "Big", b"\x01\x02" * 20_000)  # > one cell: stored as big data ("db")
    hive.set(svc, "Inline", b"\x07\x08\x09\x0a")  # 4 bytes: stored in the offset field
    hive.set(svc, "Q", Value.qword(1 << 40))
    for i in range(7):  # enough siblings for several lists and index entries
        hive.set(rf"ControlSet002\Services\svc{i}", "Start", i)
    hive.set(r"ControlSet002\Services\Ünïcode", "Wert", "ä")  # UTF-16 names
    return hive


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_through_libregf(kind: ListKind) -> None:
    data = _sample(kind).to_bytes()
    f = pyregf.file()
    f.open_file_object(io.BytesIO(data))
    services = f.get_key_by_path(r"\ControlSet002\Services")
    assert sorted(k.name for k in services.sub_keys) == sorted(
        ["cdrom", *(f"svc{i}" for i in range(7)), "Ünïcode"])
    cdrom = services.get_sub_key_by_name("cdrom")
    assert [v.name for v in cdrom.values] == [
        "Start", "ImagePath", "DependOnService", "DisplayName", "Big", "Inline", "Q"]
    assert cdrom.get_value_by_name("Big").data == b"\x01\x02" * 20_000
    assert len(b"\x01\x02" * 20_000) > BIG_DATA_SEGMENT


@pytest.mark.parametrize("kind", KINDS)
def test_reader_decodes_each_type(kind: ListKind) -> None:
    hive = Reader.from_bytes(_sample(kind).to_bytes(), "SYSTEM")
    key = r"CurrentControlSet\Services\CDROM"  # case-insensitive, resolved through Select
    assert hive.dword(key, "start") == 1
    assert hive.value(key, "ImagePath") == registry.RegValue(
        "ImagePath", registry.REG_EXPAND_SZ, r"%SystemRoot%\System32\drivers\cdrom.sys")
    assert hive.string(key, "ImagePath") == r"%SystemRoot%\System32\drivers\cdrom.sys"
    assert hive.value(key, "DependOnService") == registry.RegValue(
        "DependOnService", registry.REG_MULTI_SZ, ["Disk", "Événement"])
    assert hive.string(key, "DisplayName") == "CD-ROM Driver"
    assert hive.dword(key, "Q") == 1 << 40
    assert hive.value(key, "Inline") == registry.RegValue(
        "Inline", registry.REG_BINARY, b"\x07\x08\x09\x0a")
    assert hive.string(r"CurrentControlSet\Services\ünïcode", "Wert") == "ä"
    # type-checked accessors: a string is not a DWORD and vice versa
    assert hive.dword(key, "DisplayName") is None
    assert hive.string(key, "Start") is None
    assert hive.value(key, "Missing") is None
    assert hive.value(r"CurrentControlSet\Services\Nope", "Start") is None
    assert hive.subkeys(r"CurrentControlSet\Services\svc3") == []
    assert hive.subkeys("Nope") is None


def test_current_control_set_follows_select_current() -> None:
    hive = Reader.from_bytes(_sample().to_bytes(), "SYSTEM")
    assert hive.current_control_set == "ControlSet002"
    assert hive.resolve(r"CurrentControlSet\Services\cdrom") == r"ControlSet002\Services\cdrom"
    assert hive.display(r"CurrentControlSet\Services\cdrom", "Start") == (
        r"SYSTEM\ControlSet002\Services\cdrom\Start")
    assert hive.dword(r"ControlSet001\Services\cdrom", "Start") == 4  # explicit sets still read


def test_missing_select_current_is_a_format_error() -> None:
    writer = Hive()
    writer.set(r"ControlSet001\Services\cdrom", "Start", 1)
    writer.set("Select", "Current", "1")  # a string, not a DWORD
    hive = Reader.from_bytes(writer.to_bytes(), "SYSTEM")
    assert hive.current_control_set is None
    with pytest.raises(FormatError, match=r"SYSTEM\\Select\\Current"):
        hive.dword(r"CurrentControlSet\Services\cdrom", "Start")


def test_header_checksum_is_the_xor_libregf_verifies() -> None:
    data = bytearray(_sample().to_bytes())
    assert struct.unpack_from("<I", data, 508)[0] == checksum(bytes(data[:512]))
    data[508] ^= 0x01
    with pytest.raises(FormatError, match=r"registry hive SYSTEM: .*checksum"):
        Reader.from_bytes(bytes(data), "SYSTEM")


@pytest.mark.parametrize("data", [b"", b"regf", b"\0" * 8192, b"hbin" * 2048],
                         ids=["empty", "short", "zeros", "no-header"])
def test_not_a_hive_is_a_format_error(data: bytes) -> None:
    with pytest.raises(FormatError, match=r"^registry hive SOFTWARE"):
        Reader.from_bytes(data, "SOFTWARE")


def test_oversized_value_is_refused_not_read() -> None:
    writer = Hive()
    writer.set("K", "Huge", b"\xab" * (2 * registry.MAX_VALUE_SIZE + 3))
    hive = Reader.from_bytes(writer.to_bytes(), "SOFTWARE")
    with pytest.raises(FormatError, match=r"SOFTWARE\\K\\Huge: \d+ bytes of data, more than"):
        hive.value("K", "Huge")


def test_decode_keeps_short_or_unknown_data_as_bytes() -> None:
    assert registry.decode(registry.REG_DWORD, b"\x01\x00") == b"\x01\x00"
    assert registry.decode(registry.REG_DWORD_BIG_ENDIAN, b"\0\0\0\x05") == 5
    assert registry.decode(registry.REG_SZ, "abc\0junk".encode("utf-16-le")) == "abc"
    assert registry.decode(0x1234, b"xyz") == b"xyz"


_VALID = _sample().to_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)),
                min_size=1, max_size=8))
def test_mutated_hive_reads_or_fails_with_format_error(
        changes: list[tuple[int, int]]) -> None:
    data = bytearray(_VALID)
    for offset, byte in changes:
        data[offset] = byte
    if any(o < 508 for o, _ in changes):  # keep the header valid so the cells get exercised
        data[508:512] = struct.pack("<I", checksum(bytes(data[:508])))
    try:
        hive = Reader.from_bytes(bytes(data), "SYSTEM")
        key = r"CurrentControlSet\Services\cdrom"
        hive.subkeys(r"CurrentControlSet\Services")
        for name in ("Start", "ImagePath", "DependOnService", "Big", "Q"):
            hive.value(key, name)
    except FormatError:
        pass


def test_dirty_hive_is_read_without_its_logs() -> None:
    # Windows often leaves primary and secondary sequence numbers apart (log not replayed):
    # the primary file is still read, as it is on disk.
    data = bytearray(_sample().to_bytes())
    struct.pack_into("<I", data, 4, 9)
    struct.pack_into("<I", data, 508, checksum(bytes(data)))
    assert Reader.from_bytes(bytes(data), "SYSTEM").current_control_set == "ControlSet002"


class _CountingReader(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1, /) -> bytes:
        out = super().read(size)
        self.bytes_read += len(out)
        return out


def test_reader_reads_only_the_cells_it_needs() -> None:
    writer = Hive(file_name="SOFTWARE")
    for i in range(500):
        writer.set(rf"Classes\key{i}", "Data", bytes([i % 251]) * 8000)
    writer.set(r"Microsoft\Windows\CurrentVersion\Setup\State", "ImageState", "X")
    data = writer.to_bytes()
    stream = _CountingReader(data)
    hive = Reader(stream, "SOFTWARE")
    assert hive.string(r"Microsoft\Windows\CurrentVersion\Setup\State", "ImageState") == "X"
    assert len(data) > 3 << 20
    assert stream.bytes_read < 256 << 10  # bin headers and a few cells, not the hive
