"""A differencing VHD opened without its parent: its own footer, header, BAT and locators.

``check`` and ``inspect`` judge and describe a child whose parent is missing from the child's own
metadata; its data is not readable (absent sectors would come from the parent), so nothing that
reads data may use this view.
"""

from __future__ import annotations

import os

from .base import open_fd
from .detect import detect
from .vhd import DynamicVhdDisk
from .vhd_image import open_vhd
from .vhd_structs import DiskType


def open_child_alone(path: str, strict: bool = True) -> DynamicVhdDisk | None:
    """The differencing VHD at ``path`` with no parent, or None when it is not one."""
    fd, size = open_fd(path)
    try:
        if detect(fd, size, path) != "vhd":
            os.close(fd)
            return None
        image = open_vhd(path, fd, size, strict=strict)
    except BaseException:
        os.close(fd)
        raise
    if image.disk_type != DiskType.DIFFERENCING or image.header is None or image.bat is None:
        image.close()
        return None
    return DynamicVhdDisk(image, None)
