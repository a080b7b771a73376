"""The CLI as people and CI meet it: every error one line (click's usage errors too) naming
its file, exit 3 for the network, conflicting destination options refused, az CLI's
AZURE_STORAGE_ACCOUNT, VHDKIT_* defaults, and --debug/--log-file logs without secrets."""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, quote

import click
import pytest
from azure.storage.blob import BlobSasPermissions, generate_blob_sas
from click.testing import CliRunner

from azurite_plugin import DEV_ACCOUNT, DEV_KEY, connection_string
from cli_helpers import vhdkit
from fixtures.vhdbuild import MIB, build_dynamic, build_fixed
from vhdkit.cli import main
from vhdkit.cli._dest import destination_options
from vhdkit.upload.types import Target


def one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vhdkit: error: "), err
    for w in words:
        assert w in lines[0], (w, err)


@pytest.mark.parametrize("cmd", ["inspect", "check", "preflight", "upload", "convert"])
def test_a_directory_or_missing_file_is_one_line(cmd: str, tmp_path: Path) -> None:
    extra = [str(tmp_path / "out.vhd")] if cmd == "convert" else []
    code, _, err = vhdkit(cmd, str(tmp_path), *extra)
    one_line_error(code, err, str(tmp_path))
    code, _, err = vhdkit(cmd, str(tmp_path / "missing.vhd"), *extra)
    one_line_error(code, err, "missing.vhd")


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    disk = build_fixed(tmp_path / "d.vhd", 21 * MIB)
    code, _, err = vhdkit("convert", str(disk), str(tmp_path / "o.vhd"), "--size", "100.5M")
    one_line_error(code, err, "--size", "100.5M", "vhdkit convert --help")
    code, _, err = vhdkit("convert")
    one_line_error(code, err, "SRC")
    code, _, err = vhdkit("upload", str(disk), "--concurrency", "0")
    one_line_error(code, err, "--concurrency")
    code, _, err = vhdkit("no-such-command")
    one_line_error(code, err, "no-such-command")
    code, out, err = vhdkit()  # no command: the help, not an error
    assert code == 0 and out.startswith("Usage: vhdkit") and "3 network" in out and err == ""
    code, _, err = vhdkit("bench", "--emulator", "--container", "bench", "--size", "32M",
                          "--shape", "disk", "--disk", str(disk))
    one_line_error(code, err, "--size", "--shape disk")


def test_errors_name_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    for cmd in ("inspect", "check", "preflight", "upload"):
        code, _, err = vhdkit(cmd, str(empty), *(["--dry-run"] if cmd == "upload" else []))
        one_line_error(code, err, f"{empty}: ", "empty file")


def test_check_fix_for_a_truncated_vhd_is_not_a_failing_convert(tmp_path: Path) -> None:
    disk = build_dynamic(tmp_path / "t.vhd", 32 * MIB, 2 * MIB,
                         {0: (None, b"a" * 4096), 5: (None, b"b" * 4096)})
    with open(disk, "r+b") as fh:
        fh.truncate(os.path.getsize(disk) - 3 * MIB)  # the last block and the footer are gone
    code, out, _ = vhdkit("check", str(disk))
    assert code == 1
    fixes = [line.strip() for line in out.splitlines() if line.strip().startswith("fix:")]
    assert fixes and not any(f.startswith("fix: vhdkit convert") for f in fixes), out
    code, _, _ = vhdkit("convert", str(disk), str(tmp_path / "o.vhd"))
    assert code == 2  # the convert an earlier version suggested indeed fails


@click.command()
@destination_options()
def _show(dest: Target) -> None:
    click.echo(f"{dest.account_url} {dest.account_key} {dest.emulator} {dest.container}")


def resolve(*args: str, **env: str) -> tuple[int, str]:
    base = {k: None for k in ("AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY",
                              "AZURE_STORAGE_CONNECTION_STRING")}
    res = CliRunner().invoke(_show, list(args), env={**base, **env})
    return res.exit_code, res.output


def test_destination_options_and_az_cli_environment() -> None:
    # az CLI's convention: the account name alone, with its key or Entra ID
    code, out = resolve("--container", "c", AZURE_STORAGE_ACCOUNT="acct", AZURE_STORAGE_KEY="K")
    assert (code, out) == (0, "https://acct.blob.core.windows.net K None c\n")
    code, out = resolve("--container", "c", AZURE_STORAGE_ACCOUNT="acct")
    assert (code, out) == (0, "https://acct.blob.core.windows.net None None c\n")
    # an explicit destination wins; the ambient key of another account is not used for it
    code, out = resolve("--emulator", "--container", "c", AZURE_STORAGE_ACCOUNT="acct",
                        AZURE_STORAGE_KEY="K")
    assert code == 0 and out.startswith("None None http://127.0.0.1:10000/devstoreaccount1 c")


@pytest.mark.parametrize("args,words", [
    (["--emulator", "http://127.0.0.1:1/devstoreaccount1", "--account-key", "WRONG",
      "--container", "c"], ["--account-key", "--emulator"]),
    (["--emulator"], ["--emulator needs --container"]),
    (["--account-url", "https://a.blob.core.windows.net"], ["--account-url needs --container"]),
    (["--emulator", "--container", "c", "--connection-string", "UseDevelopmentStorage=true"],
     ["one destination", "--connection-string", "--emulator"]),
    (["https://a.blob.core.windows.net/c/b.vhd?sv=1&sig=SECRET", "--container", "x"],
     ["SAS_URL", "--container"]),
])
def test_conflicting_or_incomplete_destinations_are_refused(args: list[str], words: list[str],
                                                            tmp_path: Path) -> None:
    disk = build_fixed(tmp_path / "d.vhd", 21 * MIB)
    code, _, err = vhdkit("upload", str(disk), *args)
    one_line_error(code, err, *words)
    assert "SECRET" not in err and "WRONG" not in err


def test_vhdkit_environment_defaults(tmp_path: Path) -> None:
    disk = build_fixed(tmp_path / "d.vhd", 21 * MIB)
    res = CliRunner().invoke(main, ["upload", "--help"])
    assert "VHDKIT_CONCURRENCY" in res.output and "VHDKIT_PROGRESS_INTERVAL" in res.output
    # a CI status line every 10 s unless told
    assert "VHDKIT_PROGRESS_INTERVAL; default: 10.0;" in " ".join(res.output.split())
    res = CliRunner().invoke(main, ["upload", str(disk), "--dry-run"],
                             env={"VHDKIT_CONCURRENCY": "0"})
    assert res.exit_code == 2 and "VHDKIT_CONCURRENCY" in res.stderr
    res = CliRunner().invoke(main, ["upload", str(disk), "--dry-run", "-q"],
                             env={"VHDKIT_CONCURRENCY": "5"})
    assert res.exit_code == 0


def test_debug_log_has_requests_and_no_secrets(tmp_path: Path, azurite_url: str,
                                               container: object) -> None:
    disk = build_fixed(tmp_path / "d.vhd", 21 * MIB, writes={0: b"x" * 4096})
    log = tmp_path / "debug.log"
    name = container.container_name  # type: ignore[attr-defined]
    res = CliRunner().invoke(main, ["--log-file", str(log), "upload", str(disk),
                                    "--connection-string", connection_string(azurite_url),
                                    "--container", name, "--skip-preflight", "-q"])
    assert res.exit_code == 0, res.output
    text = log.read_text()
    assert "PUT" in text and "comp=page" in text  # request by request
    for logger in ("vhdkit", "azure", "urllib3"):  # the run's handler is gone with the run
        assert not [h for h in logging.getLogger(logger).handlers
                    if isinstance(h, logging.FileHandler)]
    assert DEV_KEY not in text and DEV_KEY[:20] not in text
    # a wrong key: exit 3 (authentication), logged with its traceback, still redacted
    wrong = "B" * 86 + "=="
    res = CliRunner().invoke(main, ["--debug", "upload", str(disk), "--account-url",
                                    azurite_url, "--account-key", wrong, "--container", name,
                                    "--blob", "w.vhd", "--skip-preflight", "-q"])
    assert res.exit_code == 3, res.output
    assert "Traceback" in res.stderr and wrong not in res.stderr and "403" in res.stderr
    # a SAS: its signature is in every request URL, never in the log
    blob = container.get_blob_client("sas.vhd")  # type: ignore[attr-defined]
    blob.create_page_blob(os.path.getsize(disk))
    sig = generate_blob_sas(DEV_ACCOUNT, name, "sas.vhd", account_key=DEV_KEY,
                            permission=BlobSasPermissions(read=True, write=True),
                            expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    sas_log = tmp_path / "sas.log"
    res = CliRunner().invoke(main, ["--log-file", str(sas_log), "upload", str(disk),
                                    f"{azurite_url}/{name}/sas.vhd?{sig}", "--overwrite",
                                    "--skip-preflight", "-q"])
    assert res.exit_code == 0, res.output
    text = sas_log.read_text()
    secret = parse_qs(sig)["sig"][0]
    assert "comp=page" in text and secret not in text and quote(secret, safe="") not in text
