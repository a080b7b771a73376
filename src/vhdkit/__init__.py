"""vhdkit: get local disk images ready for Azure and upload them fast."""

from __future__ import annotations

__version__ = "0.1.0"
