"""The one switch (MQTTD_NO_EXTENSIONS), the LOADED registry, and the optional build.

Run-time checks happen in fresh interpreters (the switch is read once, at import). The
build checks copy the source tree to a temporary directory, so the shared checkout is
never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import mqttd._accel as accel
import mqttd.mqtt.codec

ROOT = Path(__file__).resolve().parent.parent
NO_EXTENSIONS_REASON = (
    "MQTTD_NO_EXTENSIONS is set: the compiled implementations are deliberately not used"
)

PROBE = """
import json, mqttd, mqttd._accel as a, mqttd.mqtt.codec as c
from mqttd.mqtt._codec_py import ParserPy, encode_py
print(json.dumps({
    "file": mqttd.__file__, "loaded": a.LOADED, "components": list(a.COMPONENTS),
    "no_extensions": a.NO_EXTENSIONS, "parser_is_py": c.Parser is ParserPy,
    "encode_is_py": c.encode is encode_py, "has_parser_c": hasattr(c, "ParserC"),
    "parser_module": c.Parser.__module__,
}))
"""


def _env(no_extensions: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MQTTD_NO_EXTENSIONS"}
    if no_extensions is not None:
        env["MQTTD_NO_EXTENSIONS"] = no_extensions
    env.update(extra)
    return env


def _probe(no_extensions: str | None, cwd: Path = ROOT) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=_env(no_extensions),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    assert Path(result["file"]).resolve().is_relative_to(cwd.resolve()), result["file"]
    return result


# --- the switch at run time -----------------------------------------------------------------

@pytest.mark.parametrize("value", ["1", "true", "yes", "on", " TRUE ", "anything"])
def test_no_extensions_forces_pure_python(value: str) -> None:
    result = _probe(value)
    assert result["no_extensions"] is True
    assert result["loaded"] == {name: "py" for name in result["components"]}
    assert result["parser_is_py"] and result["encode_is_py"]
    assert not result["has_parser_c"]


@pytest.mark.skipif(accel.NO_EXTENSIONS, reason=NO_EXTENSIONS_REASON)
@pytest.mark.parametrize("value", [None, "", "0", "false", "no", "off", " Off "],
                         ids=["unset", "empty", "0", "false", "no", "off", "Off-padded"])
def test_extensions_load_unless_switched_off(value: str | None) -> None:
    result = _probe(value)
    assert result["no_extensions"] is False
    assert result["components"], "no accelerated components registered"
    assert result["loaded"] == {name: "c" for name in result["components"]}
    assert not result["parser_is_py"] and not result["encode_is_py"]
    assert result["has_parser_c"]
    assert result["parser_module"] == "mqttd._speedups._codec"


def test_every_component_loaded_c_in_this_run() -> None:
    """The test run itself uses the compiled code unless MQTTD_NO_EXTENSIONS says otherwise."""
    expected = "py" if accel.NO_EXTENSIONS else "c"
    assert accel.LOADED == {name: expected for name in accel.COMPONENTS}
    if accel.NO_EXTENSIONS:
        assert mqttd.mqtt.codec.Parser is mqttd.mqtt.codec.ParserPy
        assert mqttd.mqtt.codec.encode is mqttd.mqtt.codec.encode_py
    else:
        from mqttd._speedups import _codec

        assert mqttd.mqtt.codec.Parser is _codec.Parser
        assert mqttd.mqtt.codec.encode is _codec.encode


@pytest.mark.parametrize("value,expected", [
    (None, False), ("", False), ("0", False), ("false", False), ("FALSE", False),
    ("no", False), ("off", False), ("  off\n", False),
    ("1", True), ("yes", True), ("true", True), ("on", True), ("2", True), ("nope", True),
])
def test_switch_values(value: str | None, expected: bool) -> None:
    assert accel._flag(value) is expected


#: The package each accelerated component belongs to ("" = a leaf service at the top).
_LAYER = {"codec": "mqtt", "trie": "core", "metrics": "", "pubpath": "core", "records": "store",
          "kdf": "access"}


@pytest.mark.parametrize("name", accel.COMPONENTS)
def test_component_layout(name: str) -> None:
    """Facade, pure-Python reference, Cython source and stub for every accelerated component."""
    home = ROOT / "mqttd" / _LAYER[name]  # the facade and reference live in their layer
    assert (home / f"{name}.py").is_file()
    assert (home / f"_{name}_py.py").is_file()
    assert (ROOT / "mqttd" / "_speedups" / f"_{name}.pyx").is_file()
    assert (ROOT / "mqttd" / "_speedups" / f"_{name}.pyi").is_file()


# --- the build -------------------------------------------------------------------------------

_BUILD_ARTIFACTS = shutil.ignore_patterns("*.so", "*.pyd", "*.c", "*.html", "__pycache__",
                                          "*.pyc", "build")
WARNING_BANNER = "WARNING: mqttd's Cython speedups could not be compiled"


def _copy_source(dest: Path) -> Path:
    shutil.copytree(ROOT / "mqttd", dest / "mqttd", ignore=_BUILD_ARTIFACTS)
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def _build(src: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=src,
                          env=env, capture_output=True, text=True, timeout=110, check=False)


def _built_extensions(src: Path) -> list[Path]:
    return sorted((src / "mqttd" / "_speedups").glob("*.so"))


def test_build_without_a_compiler_still_succeeds(tmp_path: Path) -> None:
    src = _copy_source(tmp_path)
    sources = sorted((src / "mqttd" / "_speedups").glob("*.pyx"))
    assert sources, "nothing to compile"
    proc = _build(src, _env(None, CC="/bin/false"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert WARNING_BANNER in proc.stderr, proc.stderr
    for pyx in sources:  # one banner per extension, naming it
        assert f"({'mqttd._speedups.' + pyx.stem}: " in proc.stderr, pyx.stem
    assert _built_extensions(src) == []
    result = _probe(None, cwd=src)
    assert result["loaded"] == {name: "py" for name in result["components"]}
    assert result["loaded"]["codec"] == "py"
    assert result["parser_is_py"]


def test_build_with_no_extensions_builds_nothing(tmp_path: Path) -> None:
    src = _copy_source(tmp_path)
    proc = _build(src, _env("1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MQTTD_NO_EXTENSIONS is set: building the pure-Python mqttd only" in proc.stderr
    assert WARNING_BANNER not in proc.stderr
    assert _built_extensions(src) == []
    assert list((src / "mqttd" / "_speedups").glob("*.c")) == []  # not even cythonized
    result = _probe(None, cwd=src)
    assert result["loaded"] == {name: "py" for name in result["components"]}
