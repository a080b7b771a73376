"""Import every command module so that it registers on ``main``."""

from __future__ import annotations

from . import check_cmd, inspect_cmd  # noqa: F401
