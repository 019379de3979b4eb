"""Run the Eclipse Paho interoperability suites against a fresh mqttd.

Usage: python tests/interop/run_paho.py PAHO_TESTING_DIR [test_name ...]

PAHO_TESTING_DIR is a checkout of eclipse/paho.mqtt.testing (not part of this
repository). The suites' own command-line parsing is broken on Python 3.11,
so this loads ``client_test`` (3.1.1) and ``client_test5`` (5.0) as unittest
modules, sets the globals their ``__main__`` block would set, and runs them
against ``mqttd start -c docs/examples/paho-conformance.toml`` on a free
loopback port. Exit code 0 only if both suites pass in full.
"""

from __future__ import annotations

import importlib
import logging
import sys
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from support.process import BrokerProcess  # noqa: E402

TOPICS = ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")
WILDTOPICS = ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#")


def run_suite(module_name: str, port: int, only: list[str]) -> unittest.TestResult:
    module = importlib.import_module(module_name)
    module.topics = TOPICS
    module.wildtopics = WILDTOPICS
    module.nosubscribe_topics = ("test/nosubscribe",)
    module.host = "127.0.0.1"
    module.port = port
    module.topic_prefix = "client_test5/"
    loader = unittest.TestLoader()
    if only:
        names = [n for n in only if hasattr(module.Test, n)]
        suite = loader.loadTestsFromNames([f"Test.{n}" for n in names], module)
    else:
        suite = loader.loadTestsFromTestCase(module.Test)
    return unittest.TextTestRunner(verbosity=2).run(suite)


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    paho = Path(sys.argv[1]) / "interoperability"
    if not (paho / "client_test5.py").exists():
        print(f"{paho}: no client_test5.py here", file=sys.stderr)
        return 2
    sys.path.insert(0, str(paho))
    logging.getLogger().setLevel(logging.ERROR)
    config = (ROOT / "docs" / "examples" / "paho-conformance.toml").read_text()
    ok = True
    with BrokerProcess(config) as broker:
        for name in ("client_test", "client_test5"):
            result = run_suite(name, broker.port, sys.argv[2:])
            print(f"{name}: {result.testsRun} run, {len(result.failures)} failures, "
                  f"{len(result.errors)} errors")
            ok = ok and result.wasSuccessful()
        if "Traceback" in broker.log():
            print("the broker logged a traceback:\n" + broker.log(), file=sys.stderr)
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
