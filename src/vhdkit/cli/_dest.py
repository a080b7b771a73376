"""Destination options shared by ``upload`` and ``bench``: a SAS URL, an account URL (key or
Entra ID), a connection string or a local Azurite, turned into one :class:`Target`.

``destination_options`` adds the ``[SAS_URL]`` argument and the options to a command and hands
the command a single ``dest: Target`` instead of seven separate parameters.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import click

from ..upload.types import CONNECTION_STRING_ENV, Target
from . import _logging

F = TypeVar("F", bound=Callable[..., Any])

EMULATOR_DEFAULT = "http://127.0.0.1:10000/devstoreaccount1"
#: az CLI's convention: the account name alone means https://NAME.blob.core.windows.net, with
#: AZURE_STORAGE_KEY as its key or else Entra ID
ACCOUNT_ENV = "AZURE_STORAGE_ACCOUNT"
KEY_ENV = "AZURE_STORAGE_KEY"
_FIELDS = ("sas_url", "account_url", "account_key", "connection_string", "emulator",
           "container", "blob", "api_version", "disk_token")


def _sas(sas_url: str | None, sas_env: str | None) -> str | None:
    """The SAS URL: given, ``-`` (one line from stdin) or from the environment variable
    ``sas_env``, so it stays out of shell history and ``ps``."""
    if sas_env is not None:
        if sas_url is not None:
            raise click.UsageError("give the SAS URL either as an argument or with --sas-env")
        value = os.environ.get(sas_env, "").strip()
        if not value:
            raise click.UsageError(f"--sas-env {sas_env}: the variable is not set or empty")
        return value
    if sas_url == "-":
        value = sys.stdin.readline().strip()
        if not value:
            raise click.UsageError("SAS URL '-': nothing on standard input")
        return value
    return sas_url


def destination_options(*, blob: bool = True) -> Callable[[F], F]:
    """Add ``[SAS_URL]`` and the destination options; the command receives ``dest``."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = {name: kwargs.pop(name, None) for name in _FIELDS}
            given["sas_url"] = _sas(given["sas_url"], kwargs.pop("sas_env", None))
            given["disk_token"] = bool(given["disk_token"])
            dest = _checked(Target(**given), click.get_current_context())
            _logging.add_secrets(dest.secrets())
            return fn(*args, dest=dest, **kwargs)

        params: list[Callable[[Any], Any]] = [
            click.argument("sas_url", required=False, metavar="[SAS_URL]"),
            click.option("--sas-env", metavar="VAR", help="Read the SAS URL from environment "
                         "variable VAR (or give SAS_URL as '-' to read it from stdin)."),
            click.option("--disk-token", is_flag=True, help="Also send an Entra ID token "
                         "for https://disk.azure.com/ (a managed disk created with "
                         "--data-access-auth-mode AzureActiveDirectory; DefaultAzureCredential)."),
            click.option("--api-version", metavar="YYYY-MM-DD", help="Storage API version "
                         "to send (Azure Stack Hub / Edge refuse newer ones)."),
            click.option("--account-url", help="Blob endpoint, e.g. "
                         "https://ACCOUNT.blob.core.windows.net (Entra ID via "
                         "DefaultAzureCredential unless --account-key). Default with no other "
                         f"destination: from ${ACCOUNT_ENV}."),
            click.option("--account-key", envvar=KEY_ENV, show_envvar=True,
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


def _from_command_line(ctx: click.Context, name: str) -> bool:
    src = ctx.get_parameter_source(name)
    return src is not None and src.name in ("COMMANDLINE", "PROMPT")


def _checked(t: Target, ctx: click.Context) -> Target:
    """Refuse options that the chosen destination would silently ignore, say which option a
    destination is missing, and apply $AZURE_STORAGE_ACCOUNT as az CLI does (lowest
    precedence: after every option and $AZURE_STORAGE_CONNECTION_STRING)."""
    forms = {"SAS_URL": t.sas_url, "--account-url": t.account_url,
             "--connection-string": t.connection_string, "--emulator": t.emulator}
    chosen = [name for name, value in forms.items() if value is not None]
    if len(chosen) > 1:
        raise click.UsageError(f"give one destination, not {' and '.join(chosen)}")
    if not chosen and not os.environ.get(CONNECTION_STRING_ENV) and os.environ.get(ACCOUNT_ENV):
        account = os.environ[ACCOUNT_ENV].strip()
        t = replace(t, account_url=f"https://{account}.blob.core.windows.net")
        chosen = ["--account-url"]
    form = chosen[0] if chosen else None
    if _from_command_line(ctx, "account_key") and form not in (None, "--account-url"):
        why = ("--emulator uses the well-known development key" if form == "--emulator" else
               f"{form} carries its own credential")
        raise click.UsageError(f"--account-key goes with --account-url (or ${ACCOUNT_ENV}); "
                               f"{why}")
    if t.account_key is not None and form != "--account-url":
        t = replace(t, account_key=None)  # $AZURE_STORAGE_KEY set for another account
    if form == "SAS_URL":
        if t.container:  # a blob SAS names its blob, a container SAS its container
            raise click.UsageError("a SAS_URL names its container: drop --container (--blob "
                                   "names the blob of a container SAS)")
    elif form is not None and not t.container:
        raise click.UsageError(f"{form} needs --container NAME"
                               + (" (--blob defaults to the disk's file name)"
                                  if _has_blob(ctx) else ""))
    return t


def _has_blob(ctx: click.Context) -> bool:
    return any(p.name == "blob" for p in ctx.command.params)
