"""The ``mqttd`` command line (Typer): ``mqttd start`` runs the broker, ``mqttd ctl`` talks to
a running one (see :mod:`mqttd.cli.ctl`)."""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time

import typer

from .. import __version__
from ..config import (
    ConfigError,
    Settings,
    default_data_dir,
    listener_security_errors,
    load_settings,
)
from .ctl import main as ctl_main
from .passwd import passwd_command
from .scram import scram_passwd

app = typer.Typer(
    name="mqttd",
    help="mqttd: an MQTT 3.1 / 3.1.1 / 5.0 broker.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

LOG_LEVELS = ("debug", "info", "warning", "error")


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
    daemon: bool = typer.Option(False, "--daemon", "-d",
                                help="Run in the background (pid file and log file in the data "
                                     "directory); return once it listens, exit 1 if it fails."),
    reset_store: bool = typer.Option(False, "--reset-store",
                                     help="Move the store file aside (renamed, kept) and start "
                                          "with an empty store: for a store that cannot be "
                                          "read."),
) -> None:
    """Run the broker until SIGINT, SIGTERM or `mqttd ctl stop` (foreground unless --daemon)."""
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
        for line in listener_security_errors(settings.listeners, settings.auth):
            typer.echo(f"mqttd: {line} (--bind {first.bind})", err=True)
            raise typer.Exit(2)
    if daemon:
        raise typer.Exit(_daemonize(config, bind, port, settings.data_dir, log_level,
                                    no_uvloop, reset_store))
    logging.basicConfig(level=getattr(logging, settings.log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..ctl.server import ControlSocketError
    from ..server import StartError, run

    # Set by `mqttd start --daemon` in its child: a pipe to say "ready" on.
    ready_fd = os.environ.pop(_READY_ENV, None)

    def on_ready() -> None:
        if ready_fd is not None:
            try:
                os.write(int(ready_fd), b"ready\n")
                os.close(int(ready_fd))
            except OSError:
                pass

    try:
        run(settings, use_uvloop=not no_uvloop, on_ready=on_ready, reset_store=reset_store)
    except (StartError, ControlSocketError) as err:
        typer.echo(f"mqttd: {err}", err=True)
        raise typer.Exit(1) from None


_READY_ENV = "MQTTD_READY_FD"
#: Seconds `mqttd start --daemon` waits for the daemon to listen.
DAEMON_START_TIMEOUT = 30.0


def _daemonize(config: str | None, bind: str | None, port: int | None, data_dir: str,
               log_level: str | None, no_uvloop: bool, reset_store: bool = False) -> int:
    """Start ``mqttd start`` detached (new session, stdin closed, output to the log file),
    wait until it listens or fails; returns the exit code for this process."""
    from ..ctl.protocol import LOG_NAME, PID_NAME

    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    try:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
    except OSError as err:
        typer.echo(f"mqttd: cannot create data directory {data_dir}: {err.strerror}", err=True)
        return 1
    log_path = os.path.join(data_dir, LOG_NAME)
    cmd = [sys.executable, "-m", "mqttd", "start", "--data-dir", data_dir]
    if config is not None:
        cmd += ["--config", os.path.abspath(config)]
    if bind is not None:
        cmd += ["--bind", bind]
    if port is not None:
        cmd += ["--port", str(port)]
    if log_level is not None:
        cmd += ["--log-level", log_level]
    if no_uvloop:
        cmd.append("--no-uvloop")
    if reset_store:
        cmd.append("--reset-store")
    # The child must import this very mqttd, whatever its working directory.
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    read_fd, write_fd = os.pipe()
    env[_READY_ENV] = str(write_fd)
    with open(log_path, "ab") as log_file:
        offset = log_file.tell()
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file,
                                    stderr=subprocess.STDOUT, pass_fds=(write_fd,),
                                    start_new_session=True, cwd=data_dir, env=env)
        finally:
            os.close(write_fd)
    ready = b""
    deadline = time.monotonic() + DAEMON_START_TIMEOUT
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while b"\n" not in ready:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([pipe], [], [], left)[0]:
                break
            chunk = pipe.read(64)
            if not chunk:  # the child exited (or closed the pipe) without being ready
                break
            ready += chunk
    if ready.startswith(b"ready"):
        typer.echo(f"mqttd started (pid {proc.pid}, pid file "
                   f"{os.path.join(data_dir, PID_NAME)}); log: {log_path}")
        return 0
    try:
        code = proc.wait(5.0)
        why = f"exited with code {code}"
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        why = f"did not start listening within {DAEMON_START_TIMEOUT:g}s (stopped it)"
    typer.echo(f"mqttd failed to start: {why}; log: {log_path}", err=True)
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            tail = f.read().decode(errors="replace").strip().splitlines()[-10:]
    except OSError:
        tail = []
    for line in tail:
        typer.echo(f"  {line}", err=True)
    return 1


config_app = typer.Typer(help="Configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("check")
def config_check(
    config: str = typer.Option(..., "--config", "-c", help="TOML configuration file."),
) -> None:
    """Validate a configuration file: every problem on its own line, exit 2 if any."""
    from ..access.build import AccessError, build_access  # the broker's code, not ctl's
    from ..transport.tls import check_listener

    settings = _load(config)
    errors = []
    try:  # password and ACL files are read as the broker would read them
        build_access(settings).close()
    except AccessError as err:
        errors += err.errors
    for listener in settings.listeners:  # and TLS files as the listener loads them
        errors += check_listener(listener)
    if errors:
        for line in errors:
            typer.echo(f"{config}: {line}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{config}: ok ({len(settings.zones)} zones, "
               f"{len(settings.listeners)} listeners)")


@app.command("ctl", add_help_option=False, context_settings={
    "allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def ctl(ctx: typer.Context) -> None:
    """Control a running mqttd (EMQX's emqx_ctl): `mqttd ctl help` lists the commands.

    mqttd ctl [--data-dir DIR | -c FILE] [--json] [--timeout S] <command> [<args>]
    """
    try:
        code = ctl_main(list(ctx.args))
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    raise typer.Exit(code)


app.command("passwd", no_args_is_help=True)(passwd_command)
app.command("scram-passwd", no_args_is_help=True)(scram_passwd)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    app()
