"""``mqttd passwd``: manage a password file, as ``mosquitto_passwd`` does.

The same file serves mqttd's ``password_file`` provider and mosquitto's ``password_file``,
so this mirrors ``mosquitto_passwd``'s command line: ``FILE USER`` (prompt twice, no echo),
``-b FILE USER PASSWORD``, ``-c`` (create or overwrite), ``-D FILE USER``, ``-U FILE``
(hash a plain ``user:password`` file in place), ``-I ITERATIONS`` (mosquitto 2.1's).
It writes ``$7$`` PBKDF2-SHA512 lines. Other lines (other users, comments) are kept as
they are, and the file is replaced atomically (a temporary file renamed over it) with mode
0600, so a broker reloading it never reads half a file and no other user can read it.

Exit codes: 0 done, 1 failed (the file, the passwords typed), 2 wrong usage.
"""

from __future__ import annotations

import getpass
import os
import tempfile
import warnings

import typer

#: PBKDF2 iterations by default (mirrors ``access.password_file.DEFAULT_ITERATIONS``,
#: which is imported only when a hash is made: ``mqttd ctl`` does not load the broker).
DEFAULT_ITERATIONS = 210_000
#: MQTT strings (user names, passwords) are at most 65,535 bytes.
MAX_FIELD = 65_535


USAGE = ("usage: mqttd passwd [-c] [-I ITERATIONS] FILE USER\n"
         "       mqttd passwd [-c] [-I ITERATIONS] -b FILE USER PASSWORD\n"
         "       mqttd passwd -D FILE USER\n"
         "       mqttd passwd [-I ITERATIONS] -U FILE")


class Usage(Exception):
    """The command line is wrong (exit 2): what, then the usage lines."""


class Failed(Exception):
    """Why the command failed (exit 1): one line each, printed as ``mqttd passwd: <why>``."""

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


#: The positional arguments, whose number depends on the mode (checked in :func:`passwd_command`).
_ARGS = typer.Argument(None, metavar="FILE [USER [PASSWORD]]", show_default=False)


def passwd_command(
    args: list[str] = _ARGS,
    batch: bool = typer.Option(False, "-b", help="Batch mode: the password is the third "
                                                 "argument (it shows in the process list "
                                                 "and the shell history)."),
    create: bool = typer.Option(False, "-c", help="Create the file (overwrite it if it exists)."),
    delete: bool = typer.Option(False, "-D", help="Delete USER from the file."),
    update: bool = typer.Option(False, "-U", help="Hash every plain user:password line of "
                                                  "FILE in place."),
    iterations: int = typer.Option(DEFAULT_ITERATIONS, "-I", min=1, max=2**31 - 1,
                                   metavar="ITERATIONS",
                                   help="PBKDF2-SHA512 iterations of new hashes."),
) -> None:
    """Add, change or delete a user of a password file (mosquitto_passwd's format).

    \b
    mqttd passwd [-c] [-I N] FILE USER        prompt for the password (twice)
    mqttd passwd [-c] [-I N] -b FILE USER PASSWORD
    mqttd passwd -D FILE USER                  delete USER
    mqttd passwd [-I N] -U FILE                hash a plain user:password file
    """
    try:
        _run(list(args or []), batch, create, delete, update, iterations)
    except Usage as err:
        typer.echo(f"mqttd passwd: {err}\n{USAGE}", err=True)
        raise typer.Exit(2) from None
    except Failed as err:
        for line in err.lines:
            typer.echo(f"mqttd passwd: {line}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("", err=True)
        raise typer.Exit(130) from None


def _run(args: list[str], batch: bool, create: bool, delete: bool, update: bool,
         iterations: int) -> None:
    if update:
        if batch or create or delete:
            raise Usage("-U cannot be combined with -b, -c or -D")
        _arity(args, 1, "-U takes FILE")
    elif delete:
        if batch or create:
            raise Usage("-D cannot be combined with -b or -c")
        _arity(args, 2, "-D takes FILE USER")
    elif batch:
        _arity(args, 3, "-b takes FILE USER PASSWORD")
    else:
        _arity(args, 2, "expected FILE USER (or -b FILE USER PASSWORD, -D FILE USER, -U FILE)")
    path = args[0]
    if len(args) > 1:
        _check_user(args[1])
    if update:
        _update_plain(path, iterations)
    elif delete:
        _delete(path, args[1])
    else:
        if batch:
            _check_password(args[2], batch)
        if not create and not os.path.exists(path):
            raise Failed(f"{path}: no such file (-c creates it)")
        password = args[2] if batch else _prompt()
        _check_password(password, batch)
        _set(path, args[1], password, iterations, create)


def _arity(args: list[str], n: int, what: str) -> None:
    if len(args) != n:
        raise Usage(what)


def _check_user(user: str) -> None:
    """A user name the file can hold and the broker will read back the same."""
    why = None
    if not user:
        why = "is empty"
    elif ":" in user:
        why = "contains ':' (the file's separator)"
    elif user.startswith("#"):
        why = "starts with '#' (the file would read the line as a comment)"
    elif user != user.strip(" \t"):
        why = "starts or ends with a blank (the file's reader trims them)"
    elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in user):
        why = "contains a control character"
    elif len(_utf8(user, "user name")) > MAX_FIELD:
        why = f"is longer than {MAX_FIELD} bytes"
    if why:
        raise Usage(f"the user name {why}")


def _check_password(password: str, batch: bool) -> None:
    why = None
    if not password:
        why = "the password is empty"
    elif len(_utf8(password, "password")) > MAX_FIELD:
        why = f"the password is longer than {MAX_FIELD} bytes"
    if why:
        if batch:
            raise Usage(why)
        raise Failed(why)


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in argv arrive as lone surrogates
        raise Usage(f"the {what} is not valid UTF-8") from None


def _prompt() -> str:
    """The password, typed twice without echo."""
    try:
        with warnings.catch_warnings():
            # No terminal (a pipe): getpass reads stdin and says so itself, in one line.
            warnings.simplefilter("ignore", getpass.GetPassWarning)
            first = getpass.getpass("Password: ")
            second = getpass.getpass("Reenter password: ")
    except EOFError:
        raise Failed("no password given (end of input)") from None
    if first != second:
        raise Failed("the passwords do not match")
    return first


def _line(user: str, password: str, iterations: int) -> str:
    from ..access.password_file import hash_password

    return f"{user}:{hash_password(password.encode(), iterations).encode()}\n"


def _read(path: str) -> list[str]:
    """The file's lines, each with its line ending."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise Failed(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        number = data[:err.start].count(b"\n") + 1
        raise Failed(f"{path}:{number}: not UTF-8; file left as it was") from None
    return text.splitlines(keepends=True)


def _user_of(line: str) -> str | None:
    """The user a line is about (None for comments, blank and unreadable lines)."""
    from ..access.password_file import split_line

    try:
        entry = split_line(line)
    except ValueError:
        return None
    return None if entry is None else entry[0]


def _set(path: str, user: str, password: str, iterations: int, create: bool) -> None:
    new = _line(user, password, iterations)
    if create:
        _write(path, [new])
        return
    lines = _read(path)
    out: list[str] = []
    done = False
    for line in lines:
        if _user_of(line) == user:
            if not done:  # replace the first, drop duplicates
                out.append(new)
                done = True
            continue
        out.append(line)
    if not done:
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
        out.append(new)
    _write(path, out)


def _delete(path: str, user: str) -> None:
    lines = _read(path)
    out = [line for line in lines if _user_of(line) != user]
    if len(out) == len(lines):
        raise Failed(f"{path}: no user {user!r}; file left as it was")
    _write(path, out)


def _update_plain(path: str, iterations: int) -> None:
    """Hash every ``user:password`` line; lines that already hold a hash stay as they are.
    Any line that is neither stops the conversion before anything is written."""
    from ..access.password_file import parse_hash

    out: list[str] = []
    errors: list[str] = []
    for number, line in enumerate(_read(path), 1):
        text = line.rstrip("\r\n")
        if not text.strip() or text.startswith("#"):
            out.append(line)
            continue
        user, sep, password = text.partition(":")
        user = user.strip(" \t")
        if not sep or not user:
            errors.append(f"{path}:{number}: expected user:password")
            continue
        if password.strip(" \t").startswith(("$6$", "$7$")):
            try:
                parse_hash(password.strip(" \t"))
            except ValueError as err:
                errors.append(f"{path}:{number}: looks like a damaged hash ({err})")
            else:
                out.append(line)  # already hashed: hashing it again would lock the user out
            continue
        if not password:
            errors.append(f"{path}:{number}: empty password for {user!r}")
            continue
        out.append(_line(user, password, iterations))
    if errors:
        raise Failed(*errors, f"{path}: nothing written")
    _write(path, out)


def _write(path: str, lines: list[str]) -> None:
    """Replace the file atomically with mode 0600 (a symlink's target, not the link);
    an existing file keeps its owner when this process may give it."""
    target = os.path.realpath(path)
    directory = os.path.dirname(target)
    try:
        old = os.stat(target)
    except OSError:
        old = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".mqttd-passwd-", dir=directory)  # mode 0600
    except OSError as err:
        raise Failed(f"{path}: cannot write in {directory}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        if old is not None and (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
            try:  # root editing the broker's file: the broker must still read it
                os.chown(tmp, old.st_uid, old.st_gid)
            except OSError:
                pass
        os.replace(tmp, target)
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise Failed(f"{path}: cannot write: {err.strerror or err}") from None
