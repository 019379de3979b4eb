"""The node's log level (EMQX's ``log`` command): read it, or set it at run time."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .errors import InvalidArgument

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["LOG_LEVELS", "LogLevel"]

LOG_LEVELS = ("debug", "info", "warning", "error")

log = logging.getLogger("mqttd.mgmt")


class LogLevel:
    """The root logger's level, kept in the settings too (what ``$SYS`` and status read)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def get(self) -> str:
        """The level in effect: debug, info, warning or error."""
        return logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()

    def set(self, level: str, *, by: str = "management") -> str:
        """Set the level (case-insensitive); returns it. InvalidArgument if unknown."""
        level = level.lower()
        if level not in LOG_LEVELS:
            raise InvalidArgument(f"level must be one of {', '.join(LOG_LEVELS)}")
        logging.getLogger().setLevel(getattr(logging, level.upper()))
        self.settings.log_level = level
        log.info("log level set to %s by %s", level, by)
        return self.get()
