"""``mqttd scram-passwd``: add, change or delete a user in a SCRAM credentials file.

The file is what the ``scram`` provider reads (``mqttd/access/scram.py``): one
``user:MECHANISM:ITERATIONS:SALT:STORED_KEY:SERVER_KEY`` line per user and mechanism. The
password itself is never stored: only the keys SCRAM derives from it (PBKDF2 at a fresh
random salt), so this command does the slow part once, not the broker at each login.

``mqttd scram-passwd FILE USER`` asks for the password twice (no echo); ``-b PASSWORD``
takes it from the command line (where the process list and the shell history see it).
``--mechanism`` may be given twice to write both SCRAM-SHA-256 and SCRAM-SHA-512 lines.
Other lines (other users, comments) are kept as they are; the file is replaced atomically
(a temporary file renamed over it) with mode 0600.

Exit codes: 0 done, 1 failed (the file, the passwords typed), 2 wrong usage.
"""

from __future__ import annotations

import getpass
import os
import tempfile
from typing import NoReturn

import typer

#: SCRAM iterations by default (mirrors ``access.scram.DEFAULT_ITERATIONS``, imported only
#: when keys are made: ``mqttd ctl`` does not load the broker).
DEFAULT_ITERATIONS = 10_000
MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
#: A repeatable option (a module-level default: typer reads it from the signature).
_MECHANISM = typer.Option(None, "--mechanism", "-m", metavar="MECHANISM",
                          help="SCRAM-SHA-256 (default) or SCRAM-SHA-512; give it twice for "
                               "both.")


def scram_passwd(
    file: str = typer.Argument(..., metavar="FILE", help="The SCRAM credentials file."),
    user: str = typer.Argument(..., metavar="USER", help="The user name."),
    batch: str = typer.Option(None, "-b", "--password", metavar="PASSWORD",
                              help="The password (else asked twice, without echo); it shows "
                                   "in the process list and the shell history."),
    mechanism: list[str] = _MECHANISM,
    iterations: int = typer.Option(DEFAULT_ITERATIONS, "-I", "--iterations", metavar="ITER",
                                   help="PBKDF2 iterations (4096 … 10000000)."),
    delete: bool = typer.Option(False, "-D", "--delete",
                                help="Delete USER's lines (every mechanism) instead."),
) -> None:
    """Add or change USER's SCRAM credentials in FILE (created if missing), or delete them."""
    from ..access.scram import make_credentials, normalize_user

    mechanisms = list(dict.fromkeys(mechanism or ["SCRAM-SHA-256"]))
    for name in mechanisms:
        if name not in MECHANISMS:
            _usage(f"unknown mechanism {name!r} (known: {', '.join(MECHANISMS)})")
    if user.startswith("#") or user != user.strip(" \t"):
        _usage("a user name starting with '#' or with blanks around it cannot be stored")
    try:
        user = normalize_user(user)
    except ValueError as err:
        _usage(str(err))
    try:
        lines = _read(file)
    except OSError as err:
        _fail(f"cannot read {file}: {err.strerror or err}")
    if delete:
        if batch is not None:
            _usage("-D takes no password")
        kept = [line for line in lines if (_owner(line) or ("",))[0] != user]
        if len(kept) == len(lines):
            _fail(f"user {user!r} is not in {file}")
        _write(file, kept)
        return
    password = batch if batch is not None else _ask()
    if not password:
        _fail("empty password")
    made = {}
    for name in mechanisms:
        try:
            made[name] = make_credentials(password, name, iterations)
        except ValueError as err:
            _fail(str(err))
    out: list[str] = []
    for line in lines:
        owner = _owner(line)
        if owner is not None and owner[0] == user and owner[1] in made:
            out.append(made.pop(owner[1]).encode(user) + "\n")  # changed in place
        else:
            out.append(line)
    if out and not out[-1].endswith("\n"):
        out[-1] += "\n"
    out += [creds.encode(user) + "\n" for creds in made.values()]
    _write(file, out)


def _owner(line: str) -> tuple[str, str] | None:
    """(user, mechanism) of a credentials line; None for comments, blanks and lines the
    broker would refuse (kept as they are: ``mqttd config check`` names them)."""
    from ..access.scram import parse_line

    try:
        entry = parse_line(line)
    except ValueError:
        return None
    if entry is None:
        return None
    return entry[0], entry[1].mechanism


def _ask() -> str:
    try:
        first = getpass.getpass("Password: ")
        second = getpass.getpass("Reenter password: ")
    except (EOFError, KeyboardInterrupt):
        typer.echo("", err=True)
        raise typer.Exit(1) from None
    if first != second:
        _fail("the passwords do not match")
    return first


def _read(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.readlines()
    except FileNotFoundError:
        return []
    except UnicodeDecodeError:
        _fail(f"{path} is not UTF-8")


def _write(path: str, lines: list[str]) -> None:
    """Replace ``path`` atomically with ``lines``, mode 0600."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".scram-", dir=directory)
    except OSError as err:
        _fail(f"cannot write in {directory}: {err.strerror or err}")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.writelines(lines)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        _fail(f"cannot write {path}: {err.strerror or err}")


def _usage(why: str) -> NoReturn:
    typer.echo(f"mqttd scram-passwd: {why}", err=True)
    raise typer.Exit(2)


def _fail(why: str) -> NoReturn:
    typer.echo(f"mqttd scram-passwd: {why}", err=True)
    raise typer.Exit(1)
