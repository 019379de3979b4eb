"""The pooled aiohttp client session of a provider that asks an HTTP server (the http
authenticator, the JWT provider's JWKS fetch): opened on first use, closed with the chain."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable

import aiohttp

__all__ = ["close_session", "open_session"]


def open_session(session: aiohttp.ClientSession | None, limit: int,
                 context: ssl.SSLContext | None, timeout: float) -> aiohttp.ClientSession:
    """``session`` while it is open, else a new one: at most ``limit`` pooled connections,
    TLS verified with ``context`` (None: the system's CAs), each request within
    ``timeout`` seconds."""
    if session is not None and not session.closed:
        return session
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit,
                                       ssl=context if context is not None else True),
        timeout=aiohttp.ClientTimeout(total=timeout))


def close_session(session: aiohttp.ClientSession | None) -> Awaitable[None] | None:
    """Close ``session`` (its pooled connections): a task on the running loop, which the
    chain's ``aclose()`` awaits; None if there is nothing to close or no loop (gone, and
    its connections with it)."""
    if session is None or session.closed:
        return None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return loop.create_task(session.close())
