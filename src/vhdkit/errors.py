"""The one exception family of vhdkit.

Every error the library raises derives from :class:`VhdkitError`; lower-layer errors (OSError,
construct, the Azure SDK, libyal readers) are translated at the edge with ``raise ... from exc``.
Messages are single lines and never contain secrets.
"""

from __future__ import annotations


class VhdkitError(Exception):
    """Base class of every error vhdkit raises."""


class FormatError(VhdkitError):
    """A structure in a disk image is malformed: names the field and its byte offset."""

    def __init__(self, field: str, offset: int | None, problem: str) -> None:
        self.field = field
        self.offset = offset
        self.problem = problem
        where = f" at offset {offset}" if offset is not None else ""
        super().__init__(f"{field}{where}: {problem}")


class UnsupportedDisk(VhdkitError):
    """The file is readable but not a kind of disk vhdkit handles."""


class ParentNotFound(VhdkitError):
    """A differencing disk's parent cannot be found or is not the right parent."""


class DiskIOError(VhdkitError):
    """The operating system refused to read or write a file (missing, permission, directory)."""


class UsageError(VhdkitError):
    """The caller asked for something inconsistent (bad size, refused overwrite, ...)."""


class ConvertError(VhdkitError):
    """A conversion was refused or failed."""


class UploadError(VhdkitError):
    """An upload was refused or failed; the destination is left resumable."""


class NetworkError(UploadError):
    """The storage service could not be reached or kept failing (timeouts, resets, 5xx after
    every retry). The CLI exits 3 for it, not 2: the input is fine, the way to it is not."""


class AuthenticationError(NetworkError):
    """The storage service refused the credentials (HTTP 401/403, no Entra ID token)."""


class PreflightError(VhdkitError):
    """The operating system inside the disk could not be inspected."""
