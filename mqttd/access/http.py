"""HTTP authentication (EMQX 5's ``emqx_authn_http``): each CONNECT is a request to an
authentication server, whose answer decides.

The request is built from templates: ``body`` (a JSON object for POST, or form fields when
the ``content-type`` header says ``application/x-www-form-urlencoded``; query parameters
for GET), ``headers`` and the ``url`` itself may hold ``${clientid}``, ``${username}``,
``${password}``, ``${peerhost}``, ``${sockport}`` and ``${listener}``.

The answer, as EMQX 5 reads it:

* 200 with a JSON (or form) body ``{"result": "allow" | "deny" | "ignore",
  "is_superuser": bool, "acl": [...]}``: allow (superuser if said so, with the ACL as the
  client's, see :mod:`mqttd.access.client_acl`), deny (0x87 not authorized, as EMQX
  answers), or ignore (the next provider decides); a missing or unknown result ignores;
* 204: allow;
* any other status, a body that is not JSON or form data, a timeout or a connection
  error: ignore, logged at warning (with the configured URL, never the password or the
  body; at most one line per kind of failure every few seconds, so an authentication
  server that is down does not flood the log during a reconnect storm).

The provider is a coroutine (``kind = "async"``): while the server thinks, the event loop
serves everyone else and the client waits in ``AUTHENTICATING``. One ``aiohttp``
ClientSession, created on the loop at the first check, keeps up to ``pool_size``
connections to the server alive between checks; ``close()`` closes it.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable
from typing import Any
from urllib.parse import parse_qsl, quote

import aiohttp
import yarl

from ..config import AccessSpec
from ..core.services import AuthResult, ClientInfo
from ..mqtt.reasons import ReasonCode as RC
from .authn import register_provider
from .client_acl import AclError, parse_acl
from .httpclient import close_session, open_session
from .options import Options

log = logging.getLogger("mqttd.access")

__all__ = ["HttpProvider"]

_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_VARS = ("clientid", "username", "password", "peerhost", "sockport", "listener")
_DEFAULT_BODY = {"clientid": "${clientid}", "username": "${username}",
                 "password": "${password}"}
_FORM = "application/x-www-form-urlencoded"
#: Largest answer read from the server; an authentication verdict is a few bytes.
_MAX_BODY = 64 * 1024
#: Seconds between two warnings of the same kind.
_WARN_EVERY = 5.0

_ALLOW = AuthResult(0)


class HttpProvider:
    """``type = "http"``: see the module's docstring and docs/ACCESS.md."""

    kind = "async"
    #: The server may return an ACL: the authorization chain must exist for it.
    attaches_acl = True

    def __init__(self, spec: AccessSpec) -> None:
        opts = Options(spec)
        url = opts.string("url")
        self.method = opts.string("method", "post", choices=("post", "get")) or "post"
        body = opts.table("body", _DEFAULT_BODY)
        headers = opts.table("headers", {})
        self.timeout = opts.seconds("timeout", 5.0, low=0.001, high=300.0)
        self.pool_size = opts.integer("pool_size", 8, low=1, high=1024)
        self.url = url or ""
        if url is not None:
            _check_templates(opts, "url", url)
            try:
                parsed = yarl.URL(url)
            except ValueError as err:
                opts.error("url", f"not a URL: {err}")
            else:
                if parsed.scheme not in ("http", "https") or not parsed.host:
                    opts.error("url", "expected http://HOST[:PORT]/PATH or https://...")
        # HTTPS: the server is verified against the system's CAs or ``cafile``; ``certfile``
        # and ``keyfile`` give mqttd a client certificate (an authentication server that
        # wants mutual TLS). ``verify = false`` is for tests only, and said at start.
        self.cafile = opts.string("cafile", "") or ""
        self.certfile = opts.string("certfile", "") or ""
        self.keyfile = opts.string("keyfile", "") or ""
        self.verify = opts.boolean("verify", True)
        self.ssl: ssl.SSLContext | None = self._tls_context(opts)
        self.headers: dict[str, str] = {}
        for name, value in headers.items():
            if not isinstance(value, str):
                opts.error(f"headers.{name}", "expected a string")
                continue
            _check_templates(opts, f"headers.{name}", value)
            self.headers[name.lower()] = value
        content_type = self.headers.get("content-type")
        if self.method == "get":
            if content_type is not None:
                opts.error("headers.content-type", "a GET request has no body to describe")
            for key, value in body.items():
                if isinstance(value, (dict, list)):
                    opts.error(f"body.{key}", "GET sends the body as query parameters: "
                               "strings and numbers only")
        else:
            if content_type is None:
                self.headers["content-type"] = content_type = "application/json"
            if content_type not in ("application/json", _FORM):
                opts.error("headers.content-type", f"{content_type!r}: the body is sent as "
                           f"application/json or {_FORM}")
        self.form = content_type == _FORM
        _check_body(opts, "body", body)
        self.body = body
        opts.done()
        self.description = f"http ({self.method.upper()} {self.url})"
        self._session: aiohttp.ClientSession | None = None
        self._warned: dict[str, tuple[float, int]] = {}

    # --- the check ----------------------------------------------------------------------

    async def check(self, client: ClientInfo, password: bytes | None) -> AuthResult | None:
        values = {
            "clientid": client.client_id,
            "username": client.username or "",
            "password": password.decode("utf-8", "replace") if password else "",
            "peerhost": client.peerhost,
            "sockport": str(client.sockport),
            "listener": client.listener,
        }
        url = yarl.URL(_fill(self.url, values, quote_values=True))
        headers = {k: _fill(v, values) for k, v in self.headers.items()}
        body = _fill_tree(self.body, values)
        kwargs: dict[str, Any] = {"headers": headers}
        if self.method == "get":
            url = url.update_query({k: str(v) for k, v in body.items()})
        elif self.form:
            kwargs["data"] = {k: v if isinstance(v, str) else json.dumps(v)
                              for k, v in body.items()}
        else:
            kwargs["data"] = json.dumps(body)
        session = self._session = open_session(self._session, self.pool_size, self.ssl,
                                               self.timeout)
        try:
            # No redirects: the credentials would follow to wherever the server points.
            async with session.request(self.method.upper(), url, allow_redirects=False,
                                       **kwargs) as resp:
                if resp.status == 204:
                    return _ALLOW
                if resp.status != 200:
                    return self._ignore("status", f"answered {resp.status}", client)
                raw = await resp.content.read(_MAX_BODY + 1)
                media = resp.content_type
        except TimeoutError:
            return self._ignore("timeout", f"no answer within {self.timeout:g}s", client)
        except (aiohttp.ClientError, OSError) as err:
            # Only the error's type: aiohttp's messages carry the request URL, which holds
            # the password when the method is GET.
            return self._ignore("connect", f"failed: {type(err).__name__}", client)
        if len(raw) > _MAX_BODY:
            return self._ignore("body", f"answered more than {_MAX_BODY} bytes", client)
        answer = _parse(media, raw)
        if answer is None:
            return self._ignore("body", f"answered 200 with a {media or 'typeless'} body "
                                "that is not a JSON object or form data", client)
        result = answer.get("result")
        if result == "deny":
            return AuthResult(RC.NOT_AUTHORIZED, reason="http: denied by the server")
        if result != "allow":
            return None  # "ignore", or nothing said: the next provider decides
        flag = answer.get("is_superuser")
        superuser = flag is True or flag in ("true", "1") or (type(flag) is int and flag == 1)
        acl = None
        if "acl" in answer:
            try:
                acl = parse_acl(answer["acl"], client.client_id, client.username)
            except AclError as err:
                return AuthResult(RC.BAD_USER_NAME_OR_PASSWORD, reason=f"http: acl: {err}")
        if not superuser and acl is None:
            return _ALLOW
        return AuthResult(0, superuser=superuser, acl=acl)

    def _tls_context(self, opts: Options) -> ssl.SSLContext | None:
        """The client context for an https:// server (None for http://, or when nothing in
        the defaults is changed); option errors go to ``opts``."""
        tls_keys = [k for k in ("cafile", "certfile", "keyfile", "verify") if opts.has(k)]
        if not self.url.startswith("https://"):
            for key in tls_keys:
                opts.error(key, "only for an https:// url")
            return None
        if not tls_keys:
            return None  # aiohttp's default: the system's CAs, hostname checked
        ctx = ssl.create_default_context()
        if self.cafile:
            try:
                ctx.load_verify_locations(cafile=self.cafile)
            except (OSError, ssl.SSLError) as err:
                opts.error("cafile", f"cannot load {self.cafile}: "
                           f"{getattr(err, 'strerror', None) or err}")
        if bool(self.certfile) != bool(self.keyfile):
            opts.error("certfile" if not self.certfile else "keyfile",
                       "certfile and keyfile go together (mqttd's client certificate)")
        elif self.certfile:
            try:
                ctx.load_cert_chain(self.certfile, self.keyfile)
            except (OSError, ssl.SSLError) as err:
                opts.error("certfile", f"cannot load {self.certfile} with {self.keyfile}: "
                           f"{getattr(err, 'strerror', None) or err}")
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            log.warning("http auth %s: verify = false: the server's certificate is not "
                        "checked (anyone in the path can answer allow)", self.url)
        return ctx

    def _ignore(self, kind: str, what: str, client: ClientInfo) -> AuthResult | None:
        """Log one failure to get an answer (at most one line per kind every few
        seconds, saying how many were left out) and ignore the client."""
        now = time.monotonic()
        last, skipped = self._warned.get(kind, (0.0, 0))
        if now - last < _WARN_EVERY and last:
            self._warned[kind] = (last, skipped + 1)
            return None
        self._warned[kind] = (now, 0)
        more = f" ({skipped} more since the last such line)" if skipped else ""
        log.warning("http auth: %s %s %s; ignoring client %s%s", self.method.upper(),
                    self.url, what, client.client_id, more)
        return None

    # --- lifecycle ----------------------------------------------------------------------

    def reload(self) -> None:
        """Nothing to re-read: the server is asked every time."""

    def close(self) -> Awaitable[None] | None:
        """Close the client session (its pooled connections): a task on the running loop,
        which the chain's ``aclose()`` awaits."""
        session, self._session = self._session, None
        return close_session(session)


def _parse(media: str, raw: bytes) -> dict[str, Any] | None:
    """The server's answer as a dict, or None if it is neither JSON nor form data."""
    try:
        if media == "application/json":
            answer = json.loads(raw)
            return answer if isinstance(answer, dict) else None
        if media == _FORM:
            return dict(parse_qsl(raw.decode(), keep_blank_values=True))
    except (ValueError, UnicodeDecodeError):
        return None
    return None


def _fill(template: str, values: dict[str, str], quote_values: bool = False) -> str:
    if "${" not in template:
        return template
    if quote_values:
        return _PLACEHOLDER.sub(lambda m: quote(values[m.group(1)], safe=""), template)
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _fill_tree(node: Any, values: dict[str, str]) -> Any:
    if isinstance(node, str):
        return _fill(node, values)
    if isinstance(node, dict):
        return {k: _fill_tree(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill_tree(v, values) for v in node]
    return node


def _check_templates(opts: Options, key: str, text: str) -> None:
    for name in _PLACEHOLDER.findall(text):
        if name not in _VARS:
            opts.error(key, f"unknown placeholder ${{{name}}} (known: "
                       f"{', '.join('${' + v + '}' for v in _VARS)})")


def _check_body(opts: Options, key: str, node: Any) -> None:
    if isinstance(node, str):
        _check_templates(opts, key, node)
    elif isinstance(node, dict):
        for k, v in node.items():
            _check_body(opts, f"{key}.{k}", v)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_body(opts, f"{key}[{i}]", v)
    elif not isinstance(node, (bool, int, float)):
        opts.error(key, f"unsupported value {type(node).__name__} (TOML dates are not JSON)")


register_provider("http", HttpProvider)
