"""The command table (EMQX's emqx_ctl ``emqx_command`` table): each command with its usage text.

A command is registered with its usage line, e.g. ``"clients show <ClientId>"``,
and that line is both what ``mqttd ctl help`` prints and the grammar its
arguments are parsed with, so help and parser cannot disagree:

* leading plain words are the command path (``clients show``);
* ``<Name>`` is a required argument, ``[<Name>]`` an optional one;
* ``[a|b]`` is an optional argument restricted to those words;
* ``[--opt <Value>]`` is an option taking a value, ``[--flag]`` a flag.

As in emqx_ctl, registering a usage line that exists replaces its handler but
keeps its place, so the help order stays stable; a command's lines are grouped
under its first word (the "noun").
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

#: What a handler is given to write its answer to (the ctl's Context); the table itself
#: never looks at it, so it stays a type parameter and this module imports no server.
C = TypeVar("C")

Handler = Callable[[C, "Args"], Awaitable[None]]

#: emqx_ctl 3.x prints ``~-48s# ~s``: the description column is at most that far in, and
#: a longer usage line has its description on the next line.
_MAX_COLUMN = 48
RULE = "-" * 80

HEADER = "Usage: mqttd ctl [--data-dir <Dir>] [--json] <command> [<args>]"


class CtlError(Exception):
    """A command failed: the message is shown as ``mqttd ctl: <message>`` (or a JSON error
    object), ``reason`` is its word for programs, the exit code is ``code``."""

    def __init__(self, message: str, code: int = 1, reason: str = "failed") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason


class UsageError(CtlError):
    """Bad arguments: exit 2 with the command's usage lines."""

    def __init__(self, message: str, noun: str | None = None) -> None:
        super().__init__(message, 2, "usage")
        self.noun = noun


@dataclass(slots=True)
class Param:
    """One positional argument of a usage line."""

    name: str
    required: bool
    choices: tuple[str, ...] = ()


@dataclass(slots=True)
class Args:
    """Parsed arguments: positionals in usage order (absent optionals are None), options by
    name without the dashes (flags are True/False)."""

    pos: list[Any]
    opts: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Command(Generic[C]):
    """One registered usage line."""

    usage: str
    description: str
    handler: Handler[C]
    noun: str
    path: tuple[str, ...]  # the plain words after the noun
    params: list[Param]
    options: dict[str, bool]  # option name -> takes a value
    hidden: bool = False

    def parse(self, rest: list[str]) -> Args:
        """Bind the words after the command path; raises UsageError."""
        positional: list[str] = []
        opts: dict[str, Any] = {name: (None if takes else False)
                                for name, takes in self.options.items()}
        i = 0
        literal = False
        while i < len(rest):
            word = rest[i]
            i += 1
            if literal or not word.startswith("--") or word == "-":
                positional.append(word)
                continue
            if word == "--":
                literal = True
                continue
            name, eq, given = word[2:].partition("=")
            value: str | None = given
            if name not in self.options:
                raise UsageError(f"unknown option --{name}", self.noun)
            if self.options[name]:
                if not eq:
                    if i >= len(rest):
                        raise UsageError(f"--{name} needs a value", self.noun)
                    value = rest[i]
                    i += 1
                opts[name] = value
            else:
                if eq:
                    raise UsageError(f"--{name} takes no value", self.noun)
                opts[name] = True
        required = sum(1 for p in self.params if p.required)
        if len(positional) < required:
            missing = self.params[len(positional)]
            raise UsageError(f"missing <{missing.name}>", self.noun)
        if len(positional) > len(self.params):
            extra = positional[len(self.params)]
            raise UsageError(f"unexpected argument {extra!r}", self.noun)
        pos: list[Any] = []
        padded: list[str | None] = [*positional, *[None] * len(self.params)]
        for p, value in zip(self.params, padded, strict=False):  # padded is longer
            if value is not None and p.choices and value not in p.choices:
                raise UsageError(f"{value!r} is not one of {', '.join(p.choices)}", self.noun)
            pos.append(value)
        return Args(pos, opts)


_TOKEN = re.compile(r"\[[^\]]*\]|\S+")


def parse_usage(usage: str) -> tuple[str, tuple[str, ...], list[Param], dict[str, bool]]:
    """Split a usage line into (noun, path, positional params, options)."""
    words = _TOKEN.findall(usage)
    noun, path_words = words[0], []
    params: list[Param] = []
    options: dict[str, bool] = {}
    for word in words[1:]:
        optional = word.startswith("[")
        inner = word[1:-1].strip() if optional else word
        if inner.startswith("--"):
            name, _, value = inner[2:].partition(" ")
            options[name] = bool(value.strip())
        elif inner.startswith("<") and inner.endswith(">"):
            params.append(Param(inner[1:-1], not optional))
        elif "|" in inner:
            params.append(Param(inner, not optional, tuple(inner.split("|"))))
        elif not optional and not params:
            path_words.append(word)
        else:
            raise ValueError(f"bad usage line {usage!r}: cannot read {word!r}")
    return noun, tuple(path_words), params, options


class CommandTable(Generic[C]):
    """Every control command, in registration order (EMQX's ordered ``emqx_command`` table).

    ``C`` is what handlers are called with (the ctl's Context).
    """

    def __init__(self) -> None:
        self._commands: dict[str, Command[C]] = {}

    def register(self, usage: str, handler: Handler[C], description: str, *,
                 hidden: bool = False) -> None:
        """Add a usage line; re-registering the same line replaces its handler in place."""
        usage = " ".join(usage.split())
        noun, path, params, options = parse_usage(usage)
        self._commands[usage] = Command(usage, description, handler, noun, path, params,
                                        options, hidden)

    def command(self, usage: str, description: str, *, hidden: bool = False
                ) -> Callable[[Handler[C]], Handler[C]]:
        """Decorator form of :meth:`register`."""

        def deco(fn: Handler[C]) -> Handler[C]:
            self.register(usage, fn, description, hidden=hidden)
            return fn

        return deco

    def unregister(self, usage: str) -> None:
        """Remove a usage line (nothing if it is not there)."""
        self._commands.pop(" ".join(usage.split()), None)

    def commands(self) -> list[Command[C]]:
        """Every command, in registration order."""
        return list(self._commands.values())

    def nouns(self) -> list[str]:
        """The first words of the commands, in order of first registration."""
        seen: dict[str, None] = {}
        for cmd in self._commands.values():
            seen.setdefault(cmd.noun)
        return list(seen)

    def has_noun(self, noun: str) -> bool:
        """Whether any command starts with ``noun``."""
        return any(c.noun == noun for c in self._commands.values())

    def lookup(self, argv: list[str]) -> tuple[Command[C], Args]:
        """The command ``argv`` names and its parsed arguments; raises UsageError."""
        if not argv:
            raise UsageError("no command given")
        noun = argv[0]
        candidates = [c for c in self._commands.values() if c.noun == noun]
        if not candidates:
            close = difflib.get_close_matches(noun, self.nouns(), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"unknown command {noun!r}{hint}; see 'mqttd ctl help'")
        rest = argv[1:]
        matching = [c for c in candidates if tuple(rest[:len(c.path)]) == c.path]
        if not matching:
            verbs = sorted({c.path[0] for c in candidates if c.path})
            if rest and not rest[0].startswith("-"):
                raise UsageError(f"unknown subcommand {rest[0]!r} of {noun}", noun)
            raise UsageError(f"{noun} needs one of: {', '.join(verbs)}", noun)
        longest = max(len(c.path) for c in matching)
        error: UsageError | None = None
        for cmd in matching:
            if len(cmd.path) != longest:
                continue
            try:
                return cmd, cmd.parse(rest[len(cmd.path):])
            except UsageError as err:
                error = error or err
        assert error is not None
        raise error

    # --- help text ----------------------------------------------------------------------

    def _column(self, cmds: list[Command[C]]) -> int:
        fitting = [len(c.usage) + 2 for c in cmds if len(c.usage) + 2 <= _MAX_COLUMN]
        return max(fitting, default=_MAX_COLUMN)

    def usage_lines(self, noun: str) -> list[str]:
        """``usage  # description`` for every line of one command."""
        cmds = [c for c in self._commands.values() if c.noun == noun and not c.hidden]
        col = self._column(self.commands())
        return [_line(c, col) for c in cmds]

    def help_text(self) -> str:
        """The whole help, emqx_ctl style: a rule, then each command's usage lines."""
        col = self._column(self.commands())
        out = [HEADER]
        for noun in self.nouns():
            lines = [_line(c, col) for c in self._commands.values()
                     if c.noun == noun and not c.hidden]
            if lines:
                out.append(RULE)
                out.extend(lines)
        return "\n".join(out) + "\n"

    def help_data(self) -> list[dict[str, str]]:
        """The help as data (``help --json``): command, usage, description per line."""
        return [{"command": c.noun, "usage": c.usage, "description": c.description}
                for c in self._commands.values() if not c.hidden]


    def usage_message(self, err: UsageError) -> str:
        """``mqttd ctl: <problem>`` and the usage lines of the command concerned."""
        lines = [f"mqttd ctl: {err.message}"]
        if err.noun:
            lines += ["Usage:"] + ["  " + line for line in self.usage_lines(err.noun)]
        return "\n".join(lines)


def _line(cmd: Command[Any], col: int) -> str:
    usage = cmd.usage
    if len(usage) + 2 > col:
        return f"{usage}\n{' ' * col}# {cmd.description}"
    return f"{usage:<{col}}# {cmd.description}"
