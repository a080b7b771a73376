"""``vhdkit bench``: measured upload speed for disk-shaped data (synthetic or a real disk)."""

from __future__ import annotations

from .synthetic import SyntheticDisk, parse_run_lengths

__all__ = ["SyntheticDisk", "parse_run_lengths"]
