"""The container image (Dockerfile). No Docker daemon runs where the tests run, so the
Dockerfile is linted here, and what the image runs is run for real: its configuration under
`mqttd config check` and as a broker (on loopback, through the environment overrides an
operator would use), and its HEALTHCHECK command against that broker, up and stopped."""

from __future__ import annotations

import fnmatch
import json
import shlex
import tomllib
from pathlib import Path

from support import uid
from support.process import BrokerProcess, run_mqttd

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
CONFIG = ROOT / "contrib" / "docker" / "mqttd.toml"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    assert not pending, "a continuation line ends the file"
    return out


def _final_stage() -> list[tuple[str, str]]:
    ins = _instructions()
    last = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last:]


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def test_dockerfile_lint() -> None:
    known = {"FROM", "RUN", "COPY", "WORKDIR", "USER", "VOLUME", "EXPOSE", "ENV",
             "HEALTHCHECK", "STOPSIGNAL", "ENTRYPOINT", "CMD", "ARG", "LABEL"}
    ins = _instructions()
    assert {word for word, _ in ins} <= known
    stage = _final_stage()
    words = [word for word, _ in stage]
    # a non-root user before the process starts
    user = [args for word, args in stage if word == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert words.index("USER") < words.index("ENTRYPOINT")
    assert ("VOLUME", '["/var/lib/mqttd"]') in stage
    assert ("EXPOSE", "1883") in stage
    env = " ".join(args for word, args in stage if word == "ENV")
    assert "MQTTD_DATA_DIR=/var/lib/mqttd" in env
    entry = _exec_form(next(args for word, args in stage if word == "ENTRYPOINT"))
    assert entry[:2] == ["mqttd", "start"]  # exec form: mqttd is PID 1 and gets SIGTERM
    assert entry[entry.index("--config") + 1] == "/etc/mqttd/mqttd.toml"
    assert entry[entry.index("--data-dir") + 1] == "/var/lib/mqttd"
    health = next(args for word, args in stage if word == "HEALTHCHECK")
    cmd = _exec_form(health[health.index("CMD") + 3:].strip())
    assert cmd[:2] == ["mqttd", "ctl"] and cmd[-1] == "status"
    # every COPY source exists and is not excluded from the build context
    ignored = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
               if p.strip() and not p.startswith("#")]
    for word, args in ins:
        if word == "COPY" and not args.startswith("--from"):
            src = shlex.split(args)[0]
            assert (ROOT / src).exists(), src
            assert not any(fnmatch.fnmatch(src, pat.rstrip("/")) for pat in ignored), src
    copied = [shlex.split(args) for word, args in stage if word == "COPY"]
    assert ["contrib/docker/mqttd.toml", "/etc/mqttd/mqttd.toml"] in copied
    # each apt-get install cleans its lists in the same layer
    for word, args in ins:
        if word == "RUN" and "apt-get install" in args:
            assert "--no-install-recommends" in args and "rm -rf /var/lib/apt/lists" in args


def test_the_images_config_binds_everywhere_only_with_authentication() -> None:
    data = tomllib.loads(CONFIG.read_text())
    assert data["listeners"]["default"]["bind"] == "0.0.0.0"
    assert data["auth"]["providers"] == [{"type": "builtin"}]
    assert "allow_anonymous" not in data["listeners"]["default"]
    done = run_mqttd("config", "check", "-c", str(CONFIG))
    assert done.returncode == 0, done



def test_without_its_provider_the_images_config_is_refused(tmp_path: Path) -> None:
    """Beyond loopback with nobody authenticating: mqttd refuses (secure by default)."""
    bare = CONFIG.read_text().replace('[[auth.providers]]\ntype = "builtin"\n', "")
    assert bare != CONFIG.read_text()
    f = tmp_path / "bare.toml"
    f.write_text(bare)
    done = run_mqttd("config", "check", "-c", str(f))
    assert done.returncode == 2
    assert "listeners.default.allow_anonymous: the listener binds 0.0.0.0" in done.stderr


def test_the_images_config_runs_and_its_healthcheck_tells_up_from_down() -> None:
    """The image's configuration as the real broker (moved to loopback port 0 through the
    environment, as `docker run -e` would), and the HEALTHCHECK command against it."""
    health = next(args for word, args in _final_stage() if word == "HEALTHCHECK")
    cmd = _exec_form(health[health.index("CMD") + 3:].strip())
    b = BrokerProcess(CONFIG.read_text(), env={
        "MQTTD_LISTENERS__DEFAULT__BIND": "127.0.0.1",
        "MQTTD_LISTENERS__DEFAULT__PORT": "0", "MQTTD_NODE__NAME": uid("img@")})
    try:
        args = cmd[1:]
        args[args.index("--data-dir") + 1] = str(b.data_dir)
        up = run_mqttd(*args)
        assert up.returncode == 0, up
        # a client without a user of the table is refused: authentication is on
        from support.raw import RawClient

        with RawClient(b.port, 5) as raw:
            assert raw.connect(uid("anon-"), expect_rc=None).reason_code == 0x87
        assert b.stop() == 0
        down = run_mqttd(*args)
        assert down.returncode == 69, down
    finally:
        b.stop()
        b.cleanup()
