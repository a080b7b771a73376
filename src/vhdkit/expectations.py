"""The OS states a disk is expected to be in (``--expect``); a light module the CLI imports."""

from __future__ import annotations

from typing import Literal, get_args

#: generalized: Sysprep / agent deprovision done (an image); specialized: a VM's own disk
Expect = Literal["generalized", "specialized"]
Expect.__doc__ = "The OS state pre-flight expects: 'generalized' (an image) or 'specialized'."
EXPECTATIONS: tuple[str, ...] = get_args(Expect)
