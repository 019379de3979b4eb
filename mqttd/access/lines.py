"""Reading a line-oriented credentials file (password file, SCRAM credentials) the same way
for every provider: one ``PATH:LINE: what`` per bad line, all of them at once (capped), or
``PATH: cannot read the <what>: why``."""

from __future__ import annotations

from collections.abc import Callable

from .authn import AccessError

__all__ = ["MAX_REPORTED", "read_lines"]

#: Bad lines reported one by one; past this, one line says how many more there are.
MAX_REPORTED = 20


def read_lines(path: str, what: str, take: Callable[[int, str], None]) -> None:
    """Call ``take(line_number, text)`` for every line of the file; a ValueError it raises
    (or a line that is not UTF-8) is that line's problem. AccessError with every problem."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise AccessError([f"{path}: cannot read the {what}: {err.strerror or err}"]) from None
    errors: list[str] = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            take(number, raw.decode("utf-8"))
        except UnicodeDecodeError:
            errors.append(f"{path}:{number}: not UTF-8")
        except ValueError as err:
            errors.append(f"{path}:{number}: {err}")
    if errors:
        if len(errors) > MAX_REPORTED:
            errors[MAX_REPORTED:] = [f"{path}: … and {len(errors) - MAX_REPORTED} more bad "
                                     "lines"]
        raise AccessError(errors)
