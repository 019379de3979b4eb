"""The ``mqttd`` command line (Typer): ``mqttd start`` runs the broker."""

from __future__ import annotations

import logging
import os
import sys

import typer

from .. import __version__
from ..config import ConfigError, Settings, load_settings

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


def _load(config: str | None) -> Settings:
    """Settings from ``config`` (or the embedded defaults); a bad file exits 2."""
    if config is None:
        return Settings()
    try:
        return load_settings(config)
    except ConfigError as err:
        for line in err.errors:
            typer.echo(line, err=True)
        raise typer.Exit(2) from None


@app.command()
def start(
    config: str = typer.Option(None, "--config", "-c", help="TOML configuration file."),
    bind: str = typer.Option(None, "--bind",
                             help="Address of the default listener [default: 127.0.0.1]."),
    port: int = typer.Option(None, "--port", min=0, max=65535,
                             help="TCP port of the default listener, 0 picks a free one "
                                  "[default: 1883]."),
    data_dir: str = typer.Option(None, "--data-dir",
                                 help="Data directory [default: $MQTTD_DATA_DIR or "
                                      "~/.local/state/mqttd]."),
    log_level: str = typer.Option(None, "--log-level",
                                  help="debug, info, warning or error [default: info]."),
    no_uvloop: bool = typer.Option(False, "--no-uvloop", help="Use asyncio's own event loop."),
) -> None:
    """Run the broker in the foreground until SIGINT or SIGTERM."""
    if log_level is not None and log_level.lower() not in LOG_LEVELS:
        typer.echo(f"mqttd: --log-level must be one of {', '.join(LOG_LEVELS)}, "
                   f"not {log_level!r}", err=True)
        raise typer.Exit(2)
    settings = _load(config)
    if log_level is not None:
        settings.log_level = log_level.lower()
    if data_dir is not None:
        settings.data_dir = data_dir
    elif not settings.data_dir:
        settings.data_dir = default_data_dir()
    if bind is not None or port is not None:
        first = settings.listeners[0]
        if bind is not None:
            first.bind = bind
        if port is not None:
            first.port = port
    logging.basicConfig(level=getattr(logging, settings.log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..server import ListenerError, run

    try:
        run(settings, use_uvloop=not no_uvloop)
    except ListenerError as err:
        typer.echo(f"mqttd: {err}", err=True)
        raise typer.Exit(1) from None


config_app = typer.Typer(help="Configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("check")
def config_check(
    config: str = typer.Option(..., "--config", "-c", help="TOML configuration file."),
) -> None:
    """Validate a configuration file: every problem on its own line, exit 2 if any."""
    settings = _load(config)
    typer.echo(f"{config}: ok ({len(settings.zones)} zones, "
               f"{len(settings.listeners)} listeners)")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    app()
