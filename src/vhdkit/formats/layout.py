"""Fixed-size records as tables of ``struct`` codes: parsed by one ``unpack``, with each field's
offset at hand for errors that name the field and where it lives.

For the records every run reads (a VHD footer, a qcow2 header): importing ``construct`` and
compiling its declarations costs more than the rest of such a run.
"""

from __future__ import annotations

import itertools
import struct
from collections import namedtuple
from collections.abc import Iterable, Mapping
from typing import Any


def offsets(sizes: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Field name -> byte offset, from (name, size) in order."""
    sizes = list(sizes)
    starts = itertools.accumulate((size for _, size in sizes), initial=0)
    return {name: start for (name, _), start in zip(sizes, starts, strict=False)}


class Layout:
    """A record of named fields, each a ``struct`` code, in ``order`` (default big-endian)."""

    def __init__(self, name: str, fields: tuple[tuple[str, str], ...], order: str = ">") -> None:
        self.fields = fields
        self.format = struct.Struct(order + "".join(code for _, code in fields))
        self.size = self.format.size
        self.offsets = offsets((field, struct.calcsize(order + code)) for field, code in fields)
        self._record: Any = namedtuple(name, [field for field, _ in fields])  # type: ignore[misc]

    def parse(self, raw: bytes | memoryview) -> Any:
        """The fields of ``raw`` (exactly ``size`` bytes) as a named tuple."""
        return self._record._make(self.format.unpack(raw))

    def build(self, values: Mapping[str, Any]) -> bytes:
        return self.format.pack(*(values[field] for field, _ in self.fields))
