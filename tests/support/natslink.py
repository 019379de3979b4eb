"""A node's link to nats-server through a loopback TCP relay that can hold what the server
sends the node: a test orders what the node reads against what other nodes do meanwhile
(no part of mqttd is replaced; the node and the server speak plain NATS through it).

``hold_after(b"PUB $KV.bucket.key ")``: once the node sends a command containing those
bytes (forwarded to the server), everything the server sends the node is kept back, until
``release()`` writes it all to the node at once (one write: the node reads it together).
"""

from __future__ import annotations

import socket
import threading
import time

from . import WAIT


class HeldLink:
    """A relay on 127.0.0.1 (``url``) to the nats-server on ``port``; stopped by ``close``."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"nats://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._trigger = b""
        self._holding = False
        #: The reply subject of the command that started the hold ("" until read).
        self.reply = b""
        self._sent = b""  # what the node sent, from the trigger on
        self._held: list[tuple[socket.socket, bytearray]] = []
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._spawn(self._accept)

    def _spawn(self, target: object, *args: object) -> None:
        th = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(th)
        th.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                node, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            with self._lock:
                self._socks += [node, server]
            self._spawn(self._up, node, server)
            self._spawn(self._down, server, node)

    def _up(self, node: socket.socket, server: socket.socket) -> None:
        """Node -> server: forwarded as it comes; the trigger starts the hold first."""
        tail = b""
        while True:
            try:
                data = node.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            with self._lock:
                seen = tail + data
                if self._trigger and not self._holding and self._trigger in seen:
                    self._holding = True  # before the command reaches the server
                    self._sent = seen[seen.index(self._trigger):]
                    self._trigger = b""
                elif self._holding and not self.reply:
                    self._sent += data
                if self._holding and not self.reply and b"\r\n" in self._sent:
                    words = self._sent.split(b"\r\n", 1)[0].split()
                    self.reply = words[2] if len(words) >= 4 else b"-"
                tail = seen[-256:]
            try:
                server.sendall(data)
            except OSError:
                break
        self._shut(node, server)

    def _down(self, server: socket.socket, node: socket.socket) -> None:
        """Server -> node: forwarded, or kept back while holding."""
        while True:
            try:
                data = server.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            with self._lock:
                if self._holding:
                    for sock, buf in self._held:
                        if sock is node:
                            buf += data
                            break
                    else:
                        self._held.append((node, bytearray(data)))
                    continue
                try:
                    node.sendall(data)
                except OSError:
                    break
        self._shut(server, node)

    def _shut(self, *socks: socket.socket) -> None:
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def hold_after(self, trigger: bytes) -> None:
        with self._lock:
            self._trigger = trigger

    def held(self) -> bytes:
        with self._lock:
            return b"".join(bytes(buf) for _, buf in self._held)

    def wait_held(self, what: bytes | None = None, timeout: float = WAIT) -> None:
        """Wait (bounded) until the held bytes contain ``what`` (None: the answer to the
        command that started the hold)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                reply = self.reply
            if what is not None:
                if what in self.held():
                    return
            elif reply and reply != b"-" and b" " + reply + b" " in self.held():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or reply!r} to be held")
            time.sleep(0.01)

    def release(self) -> None:
        """Write what was held to the node, all of it at once, and stop holding."""
        with self._lock:
            self._holding = False
            held, self._held = self._held, []
            for node, buf in held:
                try:
                    node.sendall(bytes(buf))
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self.release()
        self._shut(self._listener)  # wakes the accept()
        self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            self._shut(s)
            s.close()
        for th in self._threads:
            th.join(WAIT)
