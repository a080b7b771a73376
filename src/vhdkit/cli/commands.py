"""Import every command module so that it registers on ``main``."""

from __future__ import annotations

from . import (  # noqa: F401
    bench_cmd,
    check_cmd,
    convert_cmd,
    inspect_cmd,
    preflight_cmd,
    upload_cmd,
)
