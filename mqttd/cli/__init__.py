"""The ``mqttd`` command line (Typer): ``mqttd start`` runs the broker."""

from __future__ import annotations

import logging
import os
import sys

import typer

from .. import __version__
from ..config import Listener, Settings

app = typer.Typer(
    name="mqttd",
    help="mqttd: an MQTT 3.1 / 3.1.1 / 5.0 broker.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

LOG_LEVELS = ("debug", "info", "warning", "error")


def default_data_dir() -> str:
    """``$MQTTD_DATA_DIR``, else ``$XDG_STATE_HOME/mqttd``, else ``~/.local/state/mqttd``."""
    env = os.environ.get("MQTTD_DATA_DIR")
    if env:
        return env
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return os.path.join(base, "mqttd")


@app.command()
def start(
    bind: str = typer.Option("127.0.0.1", "--bind", help="Address the listener binds to."),
    port: int = typer.Option(1883, "--port", min=0, max=65535,
                             help="TCP port (0 picks a free one)."),
    data_dir: str = typer.Option(None, "--data-dir",
                                 help="Data directory [default: $MQTTD_DATA_DIR or "
                                      "~/.local/state/mqttd]."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
    no_uvloop: bool = typer.Option(False, "--no-uvloop", help="Use asyncio's own event loop."),
) -> None:
    """Run the broker in the foreground until SIGINT or SIGTERM."""
    level = log_level.lower()
    if level not in LOG_LEVELS:
        typer.echo(f"mqttd: --log-level must be one of {', '.join(LOG_LEVELS)}, "
                   f"not {log_level!r}", err=True)
        raise typer.Exit(2)
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(data_dir=data_dir or default_data_dir(), log_level=level,
                        listeners=[Listener(name="default", bind=bind, port=port)])
    from ..server import ListenerError, run

    try:
        run(settings, use_uvloop=not no_uvloop)
    except ListenerError as err:
        typer.echo(f"mqttd: {err}", err=True)
        raise typer.Exit(1) from None


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    app()
