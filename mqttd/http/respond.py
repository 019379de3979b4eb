"""What every HTTP handler shares: JSON in and out, errors as ``{"code", "message"}``, and
listings streamed or paged without stalling the event loop.

A listing (a management :class:`~mqttd.mgmt.listing.Listing` snapshot) is answered in one
of two ways:

* without ``limit``: the whole JSON array, streamed page by page as ``mqttd ctl --json``
  writes it (a page ends after ``PAGE_ROWS`` rows or ``PAGE_SECONDS``; then the response
  drains into the socket and the loop serves others, so a slow reader waits alone);
* with ``limit`` (and ``cursor``): at most ``limit`` rows, and when more follow, the
  ``X-Next-Cursor`` header and a ``Link: <...>; rel="next"`` to fetch them with.

Either way the body is a JSON array of the rows ``mqttd ctl --json`` prints, so the two
front ends answer alike.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from aiohttp import web

from ..mgmt.errors import Conflict, Failed, InvalidArgument, MgmtError, NotFound, Unavailable
from ..mgmt.listing import SLICE_SECONDS, Listing, Row, json_default

__all__ = ["MAX_LIMIT", "PAGE_ROWS", "PAGE_SECONDS", "ApiError", "Filter", "dumps",
           "error_response", "json_body", "json_response", "listing_response",
           "mgmt_error_response"]

log = logging.getLogger("mqttd.http")

#: A page ends after this many rows or this much time (``mqttd ctl``'s page deadline).
PAGE_ROWS = 500
PAGE_SECONDS = SLICE_SECONDS
#: The largest ``limit`` a request may ask for.
MAX_LIMIT = 10_000

#: A predicate on a row (the listing's filters); None keeps every row.
Filter = Callable[[Row], bool] | None


class ApiError(Exception):
    """An HTTP answer other than success: status, a short code and a readable message."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def dumps(value: Any) -> str:
    """Compact JSON, non-ASCII kept as is (the response is UTF-8)."""
    return json.dumps(value, default=json_default, ensure_ascii=False, separators=(",", ":"))


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(data), status=status, content_type="application/json",
                        charset="utf-8")


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    resp = json_response({"code": code, "message": message}, status)
    if headers:
        resp.headers.update(headers)
    return resp


#: HTTP status of each kind of management error.
_STATUS: list[tuple[type[MgmtError], int]] = [
    (NotFound, 404), (InvalidArgument, 400), (Conflict, 409), (Unavailable, 503),
    (Failed, 500)]


def mgmt_error_response(err: MgmtError) -> web.Response:
    """A management error as an HTTP answer: the status its kind means, its reason as the
    code (a short word: ``not_found``, ``not_running``, ...) and its message."""
    status = next((s for kind, s in _STATUS if isinstance(err, kind)), 500)
    code = err.reason if _is_word(err.reason) else type(err).__name__.lower()
    return error_response(status, code, err.message)


def _is_word(text: str) -> bool:
    return bool(text) and len(text) <= 40 and text.replace("_", "").isalnum()


async def json_body(request: web.Request, allowed: tuple[str, ...],
                    required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The request's JSON object; 400 saying what is wrong (not JSON, where; not an
    object; a key missing or unknown). A body over ``max_body_size`` is 413 (aiohttp)."""
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "bad_request", "a JSON object is expected in the request body")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ApiError(400, "bad_json", f"the body is not UTF-8 (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise ApiError(400, "bad_json", f"the body is not valid JSON: {err.msg} at line "
                                        f"{err.lineno} column {err.colno}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", f"a JSON object is expected, not "
                                           f"{type(data).__name__}")
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise ApiError(400, "bad_request", f"unknown field {unknown[0]!r} (fields: "
                                           f"{', '.join(allowed)})")
    missing = [k for k in required if k not in data]
    if missing:
        raise ApiError(400, "bad_request", f"missing field {missing[0]!r}")
    return data


def query_params(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query string's parameters; 400 naming one this endpoint does not take."""
    params = {k: v for k, v in request.query.items()}
    for key in params:
        if key not in allowed:
            raise ApiError(400, "bad_request", f"unknown query parameter {key!r}"
                           + (f" (parameters: {', '.join(allowed)})" if allowed else ""))
    return params


# --- listings ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Cursor:
    #: Items of the snapshot consumed before the next page, and the key of the last one.
    offset: int
    key: Any


def _encode_cursor(cursor: _Cursor) -> str:
    raw = json.dumps([cursor.offset, cursor.key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(text: str) -> _Cursor:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        offset, key = json.loads(raw)
        if not isinstance(offset, int) or offset < 1:
            raise ValueError
    except (ValueError, TypeError, binascii.Error):
        raise ApiError(400, "bad_request", "cursor: not a cursor this API gave (use the "
                                           "X-Next-Cursor of the previous page)") from None
    return _Cursor(offset, key)


def _limit(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_LIMIT:
        raise ApiError(400, "bad_request", f"limit: an integer from 1 to {MAX_LIMIT}, not "
                                           f"{text!r}")
    return n


async def _skip(it: Iterator[Any], n: int) -> None:
    """Consume ``n`` items, yielding to the loop between pages (a generator's items
    cost something to make)."""
    clock = time.monotonic
    while n > 0:
        deadline = clock() + PAGE_SECONDS
        while n > 0 and clock() < deadline:
            step = min(n, 256)
            for _ in islice(it, step):
                pass
            n -= step
        await asyncio.sleep(0)


async def listing_response(request: web.Request, make: Callable[[], Listing[Any]],
                           key: Callable[[Row], Any], keep: Filter = None,
                           headers: dict[str, str] | None = None) -> web.StreamResponse:
    """Answer a listing: streamed whole, or one page of ``limit`` rows from ``cursor``.

    ``make`` takes the snapshot (each page request takes a new one); ``key`` names a row
    uniquely (a cursor remembers the last row's key, so a page resumes after it even when
    rows before it went away meanwhile); ``keep`` filters rows; ``headers`` are added to the
    answer (a cluster listing's nodes).
    """
    limit = _limit(request.query.get("limit"))
    cursor_text = request.query.get("cursor")
    cursor = _decode_cursor(cursor_text) if cursor_text is not None else None
    if limit is None and cursor is not None:
        raise ApiError(400, "bad_request", "cursor: give limit too")
    listing = make()  # a management error here is still a proper error answer
    if limit is None:
        return await _stream_all(request, listing, keep, headers or {})
    resp = await _page(request, make, listing, key, keep, limit, cursor)
    resp.headers.update(headers or {})
    return resp


async def _stream_all(request: web.Request, listing: Listing[Any], keep: Filter,
                      headers: dict[str, str]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8",
                                       **headers})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        await _write_rows(resp, listing, keep)
    except ConnectionError:
        # The client went away mid-listing: nothing to tell it; the snapshot is dropped.
        log.debug("http %s %s: the client went away during the listing", request.method,
                  request.path)
    return resp


async def _write_rows(resp: web.StreamResponse, listing: Listing[Any], keep: Filter) -> None:
    clock = time.monotonic
    row_of = listing.row
    it = iter(listing.items)
    n = 0
    done = False
    await resp.write(b"[")
    while not done:
        deadline = clock() + PAGE_SECONDS
        page: list[str] = []
        for _ in range(PAGE_ROWS):
            try:
                item = next(it)
            except StopIteration:
                done = True
                break
            r = row_of(item)
            if r is not None and (keep is None or keep(r)):
                page.append(dumps(r))
            if clock() >= deadline:
                break
        if page:
            # write() waits while the socket's buffer is full: a slow reader waits alone
            await resp.write((b"," if n else b"") + ",".join(page).encode())
            n += len(page)
        else:
            await asyncio.sleep(0)
    await resp.write(b"]")
    await resp.write_eof()


async def _page(request: web.Request, make: Callable[[], Listing[Any]],
                listing: Listing[Any], key: Callable[[Row], Any], keep: Filter, limit: int,
                cursor: _Cursor | None) -> web.Response:
    clock = time.monotonic
    it = iter(listing.items)
    consumed = 0
    if cursor is not None:
        await _skip(it, cursor.offset - 1)
        consumed = cursor.offset - 1
        item = next(it, None)
        r = listing.row(item) if item is not None else None
        consumed += 1
        if r is None or key(r) != cursor.key:
            # Items before the cursor went away (or came): find the cursor's row again.
            it, consumed = await _find(make, key, cursor)
    rows: list[Row] = []
    last_key = cursor.key if cursor is not None else None
    more = False
    while len(rows) < limit and not more:
        deadline = clock() + PAGE_SECONDS
        for item in it:
            consumed += 1
            r = listing.row(item)
            if r is not None:
                last_key = key(r)
                if keep is None or keep(r):
                    rows.append(r)
                    if len(rows) >= limit:
                        break
            if clock() >= deadline:
                break
        else:
            break  # the snapshot is exhausted
        if len(rows) >= limit:
            # One item looked ahead: is there anything after this page at all?
            nxt = next(it, None)
            more = nxt is not None
            break
        await asyncio.sleep(0)
    resp = json_response(rows)
    if more:
        token = _encode_cursor(_Cursor(consumed, last_key))
        resp.headers["X-Next-Cursor"] = token
        url = request.rel_url.update_query(cursor=token, limit=str(limit))
        resp.headers["Link"] = f'<{url}>; rel="next"'
    return resp


async def _find(make: Callable[[], Listing[Any]], key: Callable[[Row], Any],
                cursor: _Cursor) -> tuple[Iterator[Any], int]:
    """A new snapshot's iterator just past the row whose key is the cursor's, and how many
    items it consumed; if that row is gone, past ``offset`` items (best effort, as any
    offset: rows may then be skipped or repeated)."""
    clock = time.monotonic
    listing = make()
    it = iter(listing.items)
    consumed = 0
    deadline = clock() + PAGE_SECONDS
    for item in it:
        consumed += 1
        r = listing.row(item)
        if r is not None and key(r) == cursor.key:
            return it, consumed
        if clock() >= deadline:
            await asyncio.sleep(0)
            deadline = clock() + PAGE_SECONDS
    it = iter(make().items)
    await _skip(it, cursor.offset)
    return it, cursor.offset
