"""Destination options shared by ``upload`` and ``bench``: a SAS URL, an account URL (key or
Entra ID), a connection string or a local Azurite, turned into one :class:`Target`.

``destination_options`` adds the ``[SAS_URL]`` argument and the options to a command and hands
the command a single ``dest: Destination`` instead of seven separate parameters.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import UsageError

if TYPE_CHECKING:
    from ..upload.pageblob import Target

F = TypeVar("F", bound=Callable[..., Any])

EMULATOR_DEFAULT = "http://127.0.0.1:10000/devstoreaccount1"
CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
_FIELDS = ("sas_url", "account_url", "account_key", "connection_string", "emulator",
           "container", "blob")


@dataclass(frozen=True)
class Destination:
    """The destination options as given on the command line (secrets included: never print)."""

    sas_url: str | None = None
    account_url: str | None = None
    account_key: str | None = None
    connection_string: str | None = None
    emulator: str | None = None
    container: str | None = None
    blob: str | None = None

    def forms(self) -> list[str]:
        return [x for x in (self.sas_url, self.account_url, self.connection_string, self.emulator)
                if x is not None]

    def resolve(self, *, required: bool) -> Destination | None:
        """One destination form, or $AZURE_STORAGE_CONNECTION_STRING when none is given;
        None when there is none and ``required`` is false (a dry run)."""
        forms = self.forms()
        if len(forms) > 1:
            raise UsageError("give one destination: a SAS URL, --account-url, "
                             "--connection-string or --emulator")
        if not forms and os.environ.get(CONNECTION_STRING_ENV):
            return replace(self, connection_string=os.environ[CONNECTION_STRING_ENV])
        if not forms:
            if required:
                raise UsageError("no destination: give a SAS URL, --account-url, "
                                 "--connection-string or --emulator")
            return None
        return self

    def target(self, blob: str | None = None) -> Target:
        """The upload target, with ``blob`` replacing the --blob option when given."""
        from ..upload.pageblob import Target

        return Target(sas_url=self.sas_url, account_url=self.account_url,
                      account_key=self.account_key, connection_string=self.connection_string,
                      emulator=self.emulator, container=self.container,
                      blob=self.blob if blob is None else blob)


def destination_options(*, blob: bool = True) -> Callable[[F], F]:
    """Add ``[SAS_URL]`` and the destination options; the command receives ``dest``."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = {name: kwargs.pop(name, None) for name in _FIELDS}
            return fn(*args, dest=Destination(**given), **kwargs)

        params: list[Callable[[Any], Any]] = [
            click.argument("sas_url", required=False, metavar="[SAS_URL]"),
            click.option("--account-url", help="Blob endpoint, e.g. "
                         "https://ACCOUNT.blob.core.windows.net (Entra ID via "
                         "DefaultAzureCredential unless --account-key)."),
            click.option("--account-key", envvar="AZURE_STORAGE_KEY", show_envvar=True,
                         help="Storage account key (never printed)."),
            click.option("--connection-string", help="Storage connection string (default: "
                         f"${CONNECTION_STRING_ENV} when no other destination is given)."),
            click.option("--emulator", is_flag=False, flag_value=EMULATOR_DEFAULT, default=None,
                         metavar="[URL]", help="A local Azurite (well-known dev account)."),
            click.option("--container", help="Container (with --account-url, "
                         "--connection-string, --emulator)."),
        ]
        if blob:
            params.append(click.option("--blob", help="Blob name (default: the disk's file "
                                       "name, ending in .vhd)."))
        out: Any = wrapper
        for param in reversed(params):  # click lists parameters in decorator order
            out = param(out)
        return out  # type: ignore[no-any-return]

    return decorate


def quiet_sdk_logs() -> None:
    """The SDK logs request URLs (which may carry a SAS) on warnings; vhdkit reports errors
    itself."""
    log = logging.getLogger("azure")
    log.addHandler(logging.NullHandler())
    log.propagate = False
