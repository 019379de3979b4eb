"""A real browser as an MQTT-over-WebSocket client: headless Chromium running MQTT.js.

:func:`browser_round_trip` serves a page from a local HTTP server (127.0.0.1, port 0, in a
thread); the page loads MQTT.js, connects to the given ``ws://`` or ``wss://`` URL,
subscribes to a topic, publishes to it and POSTs what it received (or the error) back to
``/result``. The test waits, bounded, for that POST; Chromium is killed by its process group.

MQTT.js is the ``mqtt`` npm package at a pinned version: its tarball is fetched once from the
npm registry into ``~/.cache/mqttd-tests/`` and checked against the registry's published
sha512 integrity on every use; the browser bundle is ``package/dist/mqtt.min.js``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import queue
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["CHROMIUM", "MQTTJS_VERSION", "browser_round_trip", "mqttjs_bundle", "spki_hash"]

CHROMIUM = "/usr/bin/chromium"

#: The pinned MQTT.js release, its tarball and the sha512 the npm registry publishes for it
#: (``dist.integrity`` of https://registry.npmjs.org/mqtt/5.16.0).
MQTTJS_VERSION = "5.16.0"
MQTTJS_TARBALL = f"https://registry.npmjs.org/mqtt/-/mqtt-{MQTTJS_VERSION}.tgz"
MQTTJS_INTEGRITY = ("sha512-G0VsEtuJz5sJUgZJaaADMVfW7SIFPzkIuHR+d6rk+tBeSwdCfd9BaIRycRfd2Ab"
                    "yFDEmLlFM+SDQeti/+IbOnw==")
MQTTJS_BUNDLE = "package/dist/mqtt.min.js"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mqttd-tests"


def _verified(data: bytes) -> bool:
    algo, _, expected = MQTTJS_INTEGRITY.partition("-")
    return base64.b64encode(hashlib.new(algo, data).digest()).decode() == expected


def mqttjs_bundle(cache_dir: Path | None = None) -> bytes:
    """The MQTT.js browser bundle (``dist/mqtt.min.js``) of the pinned, verified tarball."""
    cache = cache_dir or _cache_dir()
    tarball = cache / f"mqtt-{MQTTJS_VERSION}.tgz"
    data = tarball.read_bytes() if tarball.exists() else b""
    if not _verified(data):
        with urllib.request.urlopen(MQTTJS_TARBALL, timeout=60) as resp:  # noqa: S310 (https)
            data = resp.read()
        if not _verified(data):
            raise RuntimeError(f"{MQTTJS_TARBALL} does not match {MQTTJS_INTEGRITY}")
        cache.mkdir(parents=True, exist_ok=True)
        tmp = tarball.with_name(f"{tarball.name}.{os.getpid()}.tmp")  # parallel runs
        tmp.write_bytes(data)
        tmp.replace(tarball)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = tar.extractfile(MQTTJS_BUNDLE)
        if member is None:
            raise RuntimeError(f"{MQTTJS_BUNDLE} is not a file in {MQTTJS_TARBALL}")
        return member.read()


def spki_hash(cert_path: Path) -> str:
    """base64 SHA-256 of a certificate's public key, for Chromium's
    ``--ignore-certificate-errors-spki-list``: trust exactly that server key for ``wss://``."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>mqttd browser test</title></head><body>
<script src="/mqtt.min.js"></script>
<script>
"use strict";
const cfg = %s;
let reported = false;
function report(result) {
  if (reported) return;
  reported = true;
  fetch("/result", {method: "POST", headers: {"Content-Type": "application/json"},
                    body: JSON.stringify(result)});
}
window.onerror = (msg) => report({error: "page: " + msg});
try {
  const opts = Object.assign({protocolVersion: cfg.protocolVersion, reconnectPeriod: 0,
                              connectTimeout: cfg.timeoutMs}, cfg.options);
  const client = mqtt.connect(cfg.url, opts);
  client.on("connect", (connack) => {
    client.subscribe(cfg.topic, {qos: 1}, (err, granted) => {
      if (err) { report({error: "subscribe: " + err}); return; }
      client.publish(cfg.topic, cfg.payload, {qos: 1}, (err2) => {
        if (err2) report({error: "publish: " + err2});
      });
    });
  });
  client.on("message", (topic, payload) => {
    report({topic: topic, payload: payload.toString(), error: null});
    client.end();
  });
  client.on("error", (err) => report({error: "error: " + (err && err.message || err)}));
  client.on("close", () => report({error: "closed before the message came back"}));
} catch (e) {
  report({error: "exception: " + e});
}
</script></body></html>
"""


class _Server:
    """The page, the bundle and ``POST /result`` on 127.0.0.1, port 0, in a thread."""

    def __init__(self, page: bytes, bundle: bytes) -> None:
        self.results: queue.Queue[dict[str, Any]] = queue.Queue()
        results = self.results

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server name)
                body, ctype = {"/": (page, "text/html; charset=utf-8"),
                               "/mqtt.min.js": (bundle, "text/javascript")}.get(
                                   self.path, (b"", ""))
                self.send_response(200 if ctype else 404)
                self.send_header("Content-Type", ctype or "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(204)
                self.end_headers()
                if self.path == "/result":
                    results.put(json.loads(body))

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # quiet: the test's output is not the place for access logs

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """End Chromium and its renderer, GPU and utility processes (one process group): SIGTERM
    first, so the browser can end its children, then SIGKILL for whatever is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(3.0)
        except subprocess.TimeoutExpired:
            pass
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the whole group is gone already
    proc.wait()


def browser_round_trip(ws_url: str, topic: str, payload: str, protocol_version: int = 4,
                       timeout: float = 30.0, *, options: dict[str, Any] | None = None,
                       trust_certs: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Chromium + MQTT.js: connect to ``ws_url``, subscribe to ``topic``, publish ``payload``
    (QoS 1 both) and return what the page reported: ``{"topic", "payload", "error"}`` (error
    None on success) plus ``"origin"``, the page's Origin (``http://127.0.0.1:PORT``).
    ``options`` go to ``mqtt.connect`` (e.g. ``clientId``, ``username``, ``password``);
    ``trust_certs`` are server certificates Chromium accepts for ``wss://`` (by their key).
    Raises ``TimeoutError`` if nothing is reported in ``timeout`` seconds."""
    cfg = {"url": ws_url, "topic": topic, "payload": payload, "protocolVersion": protocol_version,
           "timeoutMs": int(timeout * 1000), "options": options or {}}
    # "</" never appears in the JSON, so it cannot end the script element.
    page = (_PAGE % json.dumps(cfg).replace("</", "<\\/")).encode()
    server = _Server(page, mqttjs_bundle())
    profile = Path(tempfile.mkdtemp(prefix="mqttd-chromium-"))
    log_path = profile / "chromium.log"
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--enable-logging=stderr", f"--user-data-dir={profile}/data"]
    if trust_certs:
        args.append("--ignore-certificate-errors-spki-list="
                    + ",".join(spki_hash(c) for c in trust_certs))
    url = f"http://127.0.0.1:{server.port}/"
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([*args, url], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    result = server.results.get(timeout=0.1)
                    break
                except queue.Empty:
                    pass
                if proc.poll() is not None:
                    raise RuntimeError(f"chromium exited with {proc.returncode}:\n"
                                       + log_path.read_text(errors="replace")[-4000:])
                if time.monotonic() > deadline:
                    raise TimeoutError("the page reported nothing in time; chromium's log:\n"
                                       + log_path.read_text(errors="replace")[-4000:])
        finally:
            _kill_group(proc)
    finally:
        server.close()
        shutil.rmtree(profile, ignore_errors=True)
    result.setdefault("error", None)
    result["origin"] = f"http://127.0.0.1:{server.port}"
    return result
