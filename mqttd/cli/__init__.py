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
from typing import NoReturn

import typer

from .. import SYSDESCR, __version__, logsetup
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
    help=SYSDESCR,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: rich's markup would eat "[default: ...]" and print <bool> beside
    # every flag (Typer 0.29's rich help).
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"mqttd {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", "-V", is_eager=True,
                                 callback=_print_version, help="Print the version and exit."),
) -> None:
    """The options of ``mqttd`` itself (its help text is SYSDESCR, given above)."""

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
#: Start-up errors are log lines too (timestamped, in the configured format once known).
_log = logging.getLogger("mqttd")


def _load(config: str | None) -> Settings:
    """Settings from ``config`` (or the embedded defaults); a bad file exits 2."""
    try:  # the file (or none) under the environment's MQTTD_<SECTION>__<KEY> settings
        return load_settings(config)
    except ConfigError as err:
        for line in err.errors:
            typer.echo(line, err=True)
        raise typer.Exit(2) from None


@app.command()
def start(
    config: str = typer.Option(None, "--config", "-c", metavar="FILE",
                               help="TOML configuration file  [default: none: the embedded "
                                    "defaults]."),
    bind: str = typer.Option(None, "--bind", metavar="ADDRESS",
                             help="Address of the default listener  [default: 127.0.0.1]."),
    port: int = typer.Option(None, "--port", min=0, max=65535, metavar="PORT",
                             help="TCP port of the default listener, 0 picks a free one  "
                                  "[default: 1883]."),
    data_dir: str = typer.Option(None, "--data-dir", metavar="DIR",
                                 help="Data directory  [default: $MQTTD_DATA_DIR or "
                                      "~/.local/state/mqttd]."),
    log_level: str = typer.Option(None, "--log-level", metavar="LEVEL",
                                  help="debug, info, warning or error  [default: [log] level, "
                                       "else info]."),
    log_format: str = typer.Option(None, "--log-format", metavar="FORMAT",
                                   help="text or json  [default: [log] format, else text]."),
    log_file: str = typer.Option(None, "--log-file", metavar="FILE",
                                 help="Log file, relative to the data directory; - is "
                                      "standard error  [default: [log] file, else standard "
                                      "error; mqttd.log with --daemon]."),
    no_uvloop: bool = typer.Option(False, "--no-uvloop", help="Use asyncio's own event loop."),
    daemon: bool = typer.Option(False, "--daemon", "-d",
                                help="Run in the background (pid file and log file in the data "
                                     "directory); return once it listens, exit 1 if it fails."),
    reset_store: bool = typer.Option(False, "--reset-store",
                                     help="Move the store file aside (renamed, kept) and start "
                                          "with an empty store: for a store that cannot be "
                                          "read."),
    workers: int = typer.Option(1, "--workers", "-w", min=1, max=256, metavar="N",
                                help="Worker processes, each a cluster node on the same ports "
                                     "(SO_REUSEPORT), under a supervisor; over [cluster] "
                                     "nats_url, else a nats-server it starts  [default: 1: "
                                     "one process]."),
) -> None:
    """Run the broker until SIGINT, SIGTERM or `mqttd stop` (foreground unless --daemon)."""
    if log_level is not None and log_level.lower() not in LOG_LEVELS:
        _usage(f"--log-level must be one of {', '.join(LOG_LEVELS)}, not {log_level!r}")
    if log_format is not None and log_format.lower() not in LOG_FORMATS:
        _usage(f"--log-format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    # Every line from here on is a stamped log line, start-up errors too; the [log] section
    # takes over once the file is read.
    logsetup.configure_early((log_level or "info").lower())
    from ..ctl.protocol import LOG_NAME
    from ..workers import apply_worker, worker_spec

    spec = worker_spec()  # set when this process is a worker of `mqttd start --workers N`
    # (A worker is told to say "ready" as a daemon is, but logs where its supervisor does.)
    daemon_child = _READY_ENV in os.environ and spec is None
    # The environment it was started with: a reload reads the same MQTTD_* settings.
    environ = dict(os.environ)

    def settings_for_start(settings: Settings) -> Settings:
        """The command line's options over the file's and the environment's settings (at
        start, and again at each `mqttd ctl conf reload` / SIGHUP)."""
        if log_level is not None:
            settings.log_level = log_level.lower()
        if log_format is not None:
            settings.log.format = log_format.lower()
        if log_file is not None:
            settings.log.file = "" if log_file == "-" else log_file
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
            errors = listener_security_errors(settings.listeners, settings.auth)
            if errors:
                raise ConfigError([f"{line} (--bind {first.bind})" for line in errors])
        if daemon_child and not settings.log.file and log_file is None:
            # A daemon's log: a file of its own (reopened on SIGHUP), not its inherited
            # stderr.
            settings.log.file = LOG_NAME
        return settings

    if spec is not None:
        base_settings_for_start = settings_for_start

        def settings_for_start(settings: Settings) -> Settings:
            settings = base_settings_for_start(settings)
            apply_worker(settings, spec)
            return settings

    def reload_settings() -> Settings:
        return settings_for_start(load_settings(config, environ))

    try:
        settings = settings_for_start(_load_for_start(config))
    except ConfigError as err:
        for line in err.errors:
            _log.error("%s", line)
        raise typer.Exit(2) from None
    if spec is not None:  # a worker's lines go where its siblings' do: each names its node
        logsetup.set_node_tag(settings.node)
    if daemon:
        raise typer.Exit(_daemonize(config, bind, port, settings, log_level, log_format,
                                    log_file, no_uvloop, reset_store, workers))
    try:
        _configure_log(settings)
    except ValueError as err:
        _log.error("%s", err)
        raise typer.Exit(1) from None
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

    if workers > 1 and spec is None:
        from ..workers import WorkersError, supervise

        argv = _start_args(config, bind, port, log_level, log_format, log_file, no_uvloop,
                           reset_store)
        try:
            raise typer.Exit(supervise(settings, workers, argv, on_ready))
        except (WorkersError, ControlSocketError) as err:
            _log.error("%s", err)
            raise typer.Exit(1) from None
    try:
        run(settings, use_uvloop=not no_uvloop, on_ready=on_ready, reset_store=reset_store,
            loader=reload_settings, reuse_port=spec is not None,
            config_file=os.path.abspath(config) if config is not None else None)
    except (StartError, ControlSocketError) as err:
        _log.error("%s", err)
        raise typer.Exit(1) from None


def _usage(message: str) -> NoReturn:
    typer.echo(f"mqttd: {message}", err=True)
    raise typer.Exit(2)


def _load_for_start(config: str | None) -> Settings:
    """``_load`` for ``mqttd start``: every problem as a stamped log line, exit 2."""
    try:  # the file (or none) under the environment's MQTTD_<SECTION>__<KEY> settings
        return load_settings(config)
    except ConfigError as err:
        for line in err.errors:
            _log.error("%s", line)
        raise typer.Exit(2) from None


def _configure_log(settings: Settings) -> None:
    """The process's logging as ``[log]`` (and the command line) say; ValueError if a
    destination cannot be opened."""
    st = settings.log
    logsetup.configure(level=settings.log_level, format=st.format, file=st.file,
                       data_dir=settings.data_dir, max_size=st.max_size, rotate=st.rotate,
                       syslog=st.syslog, syslog_address=st.syslog_address,
                       syslog_facility=st.syslog_facility,
                       connection_messages=st.connection_messages)


_READY_ENV = "MQTTD_READY_FD"
#: Seconds `mqttd start --daemon` waits for the daemon to listen.
DAEMON_START_TIMEOUT = 30.0


def _start_args(config: str | None, bind: str | None, port: int | None,
                log_level: str | None, log_format: str | None, log_file: str | None,
                no_uvloop: bool, reset_store: bool) -> list[str]:
    """``mqttd start``'s options again, for a child process (no --data-dir, --daemon,
    --workers)."""
    cmd: list[str] = []
    if config is not None:
        cmd += ["--config", os.path.abspath(config)]
    if bind is not None:
        cmd += ["--bind", bind]
    if port is not None:
        cmd += ["--port", str(port)]
    if log_level is not None:
        cmd += ["--log-level", log_level]
    if log_format is not None:
        cmd += ["--log-format", log_format]
    if log_file is not None:
        cmd += ["--log-file", log_file]
    if no_uvloop:
        cmd.append("--no-uvloop")
    if reset_store:
        cmd.append("--reset-store")
    return cmd


def _daemonize(config: str | None, bind: str | None, port: int | None, settings: Settings,
               log_level: str | None, log_format: str | None, log_file: str | None,
               no_uvloop: bool, reset_store: bool = False, workers: int = 1) -> int:
    """Start ``mqttd start`` detached (new session, stdin closed, output to the log file),
    wait until it listens or fails; returns the exit code for this process."""
    from ..ctl.protocol import LOG_NAME, PID_NAME

    data_dir = os.path.abspath(os.path.expanduser(settings.data_dir))
    try:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
    except OSError as err:
        typer.echo(f"mqttd: cannot create data directory {data_dir}: {err.strerror}", err=True)
        return 1
    # Where the child's output goes (before its logging is set up, and anything it prints),
    # and where its log lines go: the same file unless [log] file names another.
    output_path = os.path.join(data_dir, LOG_NAME)
    log_path = logsetup.log_path(settings.log.file, data_dir) if settings.log.file \
        else output_path
    cmd = [sys.executable, "-m", "mqttd", "start", "--data-dir", data_dir,
           *_start_args(config, bind, port, log_level, log_format, log_file, no_uvloop,
                        reset_store)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    # The child must import this very mqttd, whatever its working directory.
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    read_fd, write_fd = os.pipe()
    env[_READY_ENV] = str(write_fd)
    try:
        offset = os.path.getsize(log_path)
    except OSError:
        offset = 0
    with open(output_path, "ab") as output:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=output,
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
    from ..access.users import UserTable
    from ..bridge.client import TlsFilesError, tls_context
    from ..transport.tls import check_listener

    settings = _load(config)
    errors = []
    # `mqttd start` always has a store unless durability is off (the data directory has a
    # default): the built-in user table will be there, its users are not this file's.
    users = UserTable() if settings.store.durability != "off" else None
    try:  # password and ACL files are read as the broker would read them
        build_access(settings, users).close()
    except AccessError as err:
        errors += err.errors
    for listener in settings.listeners:  # and TLS files as the listener loads them
        errors += check_listener(listener)
    for bridge in settings.bridges:  # and as each bridge loads them
        try:
            tls_context(bridge)
        except TlsFilesError as err:
            errors += [f"bridges.{bridge.name}.{line}" for line in err.problems]
    if errors:
        for line in errors:
            typer.echo(f"{config}: {line}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{config}: ok ({len(settings.zones)} zones, "
               f"{len(settings.listeners)} listeners)")


@config_app.command("show")
def config_show(
    config: str = typer.Option(None, "--config", "-c", metavar="FILE",
                               help="TOML configuration file  [default: none]."),
    json_output: bool = typer.Option(False, "--json", help="One JSON array of "
                                     "{key, value, source}."),
    data_dir: str = typer.Option(None, "--data-dir", metavar="DIR",
                                 help="As mqttd start's option."),
    bind: str = typer.Option(None, "--bind", metavar="ADDRESS",
                             help="As mqttd start's option."),
    port: int = typer.Option(None, "--port", min=0, max=65535, metavar="PORT",
                             help="As mqttd start's option."),
    log_level: str = typer.Option(None, "--log-level", metavar="LEVEL",
                                  help="As mqttd start's option."),
) -> None:
    """Print every setting in force and where it came from: default, file, env MQTTD_...
    or command line (secrets are not shown)."""
    import json

    from ..config import load_config
    from ..config_sources import effective

    try:
        loaded = load_config(config)
    except ConfigError as err:
        for line in err.errors:
            typer.echo(line, err=True)
        raise typer.Exit(2) from None
    s = loaded.settings
    if log_level is not None:
        if log_level.lower() not in LOG_LEVELS:
            typer.echo(f"mqttd: --log-level must be one of {', '.join(LOG_LEVELS)}, "
                       f"not {log_level!r}", err=True)
            raise typer.Exit(2)
        s.log_level = log_level.lower()
        loaded.cli["log.level"] = "--log-level"
    if data_dir is not None:
        s.data_dir = data_dir
        loaded.cli["node.data_dir"] = "--data-dir"
    first = s.listeners[0]
    for option, key, value in (("--bind", "bind", bind), ("--port", "port", port)):
        if value is not None:
            setattr(first, key, value)
            loaded.cli[f"listeners.{first.name}.{key}"] = option
    rows = effective(loaded)
    if json_output:
        typer.echo(json.dumps([{"key": r.key, "value": r.value, "source": r.source}
                               for r in rows], indent=1))
        return
    shown = [(r.key, json.dumps(r.value), r.source) for r in rows]
    kw = max(len(k) for k, _, _ in shown)
    vw = min(40, max(len(v) for _, v, _ in shown))
    typer.echo(f"{'Key':<{kw}}  {'Value':<{vw}}  Source")
    for key, value, source in shown:
        typer.echo(f"{key:<{kw}}  {value:<{vw}}  {source}")


@config_app.command("example")
def config_example() -> None:
    """Print the commented default configuration (every key with its default); start a
    file from it: mqttd config example > mqttd.toml"""
    from ..config_sources import example

    typer.echo(example(), nl=False)


@app.command("ctl", add_help_option=False, context_settings={
    "allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def ctl(ctx: typer.Context) -> None:
    """Control a running mqttd (EMQX's emqx_ctl): `mqttd ctl help` lists the commands.

    mqttd ctl [--data-dir DIR | -c FILE] [--json] [--timeout S] <command> [<args>]
    """
    raise typer.Exit(_ctl(list(ctx.args)))


app.command("passwd", no_args_is_help=True)(passwd_command)
app.command("scram-passwd", no_args_is_help=True)(scram_passwd)


_PASS_THROUGH = {"add_help_option": False, "context_settings": {
    "allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}}


@app.command("status", **_PASS_THROUGH)  # type: ignore[arg-type]
def status(ctx: typer.Context) -> None:
    """Is mqttd running? Its node, version, uptime (short for `mqttd ctl status`).

    mqttd status [--data-dir DIR | -c FILE] [--json] [--timeout S]
    """
    raise typer.Exit(_ctl(["status", *ctx.args]))


@app.command("stop", **_PASS_THROUGH)  # type: ignore[arg-type]
def stop(ctx: typer.Context) -> None:
    """Stop the running mqttd gracefully (short for `mqttd ctl stop`).

    mqttd stop [--data-dir DIR | -c FILE] [--json] [--timeout S]
    """
    raise typer.Exit(_ctl(["stop", *ctx.args]))


def _ctl(args: list[str]) -> int:
    try:
        return ctl_main(args)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    app()
