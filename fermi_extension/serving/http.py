"""The HTTP/1.1 layer shared by the router and the model servers.

Parsing belongs to llhttp (through ``httptools``, the parser uvicorn uses), never to our code;
this module turns its callbacks into requests and answers, on plain asyncio protocols (no task
per request: a handler that answers at once costs one call).

Server side::

    server = HttpServer(handler, limits=Limits(...), server_header=b"fermi-model-server")
    await server.listen(host, port)          # or listen(sock=an inherited socket)
    ...
    await server.drain(grace_seconds)        # stop accepting, let requests in flight finish
    server.close()

``handler(request)`` gets a :class:`Request` with ``method`` (str), ``target`` (bytes, as sent),
``path`` and ``query`` (str, not percent-decoded), ``headers`` (list of ``(name, value)`` bytes,
names lower-cased; ``raw_headers`` the same as sent), ``body`` (bytes, whole: chunked bodies arrive de-chunked), ``version``
("1.0"/"1.1") and ``keep_alive``. It returns, or returns an awaitable (a Future or a coroutine)
of, one of:

- ``(status, headers, body)``: ``headers`` a dict or a sequence of ``(name, value)`` (str or
  bytes);
  Content-Length, Connection, Server and Date are added here (``Content-Type`` defaults to
  ``application/json``); a HEAD request gets the head only;
- ``Stream(status, headers, source)``: the body comes from a :class:`BodySource` as it arrives
  (chunked to HTTP/1.1 callers), with back-pressure on the source.

Raising :class:`HttpError` (status, message) answers ``{"error": message}``. Any other exception
answers 500 and closes. ``check_head(request)`` (optional) runs when the head has arrived and
before the body is read or ``100 Continue`` sent; it raises HttpError to refuse, and the
connection is closed without taking the body in.

Malformed input never reaches a handler: llhttp's refusal answers 400, a head over
``Limits.head_size`` 431, a body over ``Limits.body_size`` 413 (at the head, from its
Content-Length, without reading the body), a head or a body that has not fully arrived within
``Limits.head_timeout`` / ``Limits.body_timeout`` seconds 408, an HTTP version other than 1.x
505; each with a JSON ``{"error": ...}`` body and ``Connection: close``, then the connection is
closed. Pipelined requests are answered in order, one at a time.

Client side (the router's forwarding): :class:`Upstream` is one server with a pool of idle
keep-alive connections; ``Upstream.request(head, body)`` sends a request head (built by the
caller) and resolves to an :class:`UpstreamResponse`, parsed by llhttp's response parser: the
whole body when it is short and of known length, else a :class:`BodySource` that streams it
(server-sent events reach the caller chunk by chunk).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

import httptools

log = logging.getLogger("fermi.http")

WRITE_HIGH_WATER = 256 * 1024  # a slow reader holds up the source once this much is buffered
MAX_PIPELINED = 32  # requests parsed ahead of the one being answered; reading pauses beyond
SMALL_BODY = 64 * 1024  # upstream answers up to this long (and of known length) arrive whole


@dataclass(frozen=True)
class Limits:
    """What a caller may send: sizes in bytes, times in seconds."""

    head_size: int = 64 * 1024
    body_size: int = 64 * 1024 * 1024
    head_timeout: float = 10.0  # from a request's first byte to the end of its head
    body_timeout: float = 60.0  # from the end of the head to the end of the body
    idle_timeout: float = 75.0  # a keep-alive connection with nothing to do is closed


def add_timeout_arguments(parser) -> None:
    """``--head-timeout`` and ``--body-timeout`` of a process serving with this module."""
    parser.add_argument("--head-timeout", type=float, default=Limits.head_timeout,
                        help="seconds a caller has to send a request head (default %(default)s); 408 after")
    parser.add_argument("--body-timeout", type=float, default=Limits.body_timeout,
                        help="seconds a caller has to send a request body (default %(default)s); 408 after")


class HttpError(Exception):
    """An answer ``{"error": message}`` with this status; ``close`` ends the connection after."""

    def __init__(self, status: int, message: str, headers=(), close: bool = False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        self.close = close


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}, ensure_ascii=False).encode()


class _Date:
    """The Date header, formatted once a second."""

    second = 0
    value = b""

    @classmethod
    def header(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second = now
            cls.value = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return cls.value


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Status"


_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}


def status_line(status: int) -> bytes:
    return _STATUS_LINES.get(status) or b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))


def _encode_headers(headers) -> list[bytes]:
    out = []
    for name, value in headers.items() if isinstance(headers, dict) else headers:
        out.append(name if isinstance(name, bytes) else name.encode("latin-1"))
        out.append(b": ")
        out.append(value if isinstance(value, bytes) else str(value).encode("latin-1"))
        out.append(b"\r\n")
    return out


class Request:
    __slots__ = ("method", "target", "path", "query", "headers", "raw_headers", "body", "version",
                 "keep_alive", "content_length", "chunked")

    def header(self, name: bytes) -> bytes | None:
        """The value of the first header of this (lower-case) name."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


class BodySource:
    """A body that arrives in pieces: fed by its producer, drained by one consumer that sets
    ``on_data(bytes)``, ``on_end()`` and ``on_error(exc)`` through :meth:`start`. The producer
    passes ``pause``/``resume`` (back-pressure) and ``cancel`` (the consumer went away);
    ``when_finished(callback)`` calls ``callback(error or None)`` once the body has ended,
    failed or been cancelled."""

    __slots__ = ("_pending", "_ended", "_error", "_on_data", "_on_end", "_on_error", "_pause",
                 "_resume", "_cancel", "_then", "_finished_with")

    def __init__(self, pause=None, resume=None, cancel=None):
        self._pending: list[bytes] | None = []
        self._ended = False
        self._error: BaseException | None = None
        self._on_data = self._on_end = self._on_error = None
        self._pause, self._resume, self._cancel = pause, resume, cancel
        self._then = None
        self._finished_with: list | None = None  # [error or None] once finished

    def when_finished(self, callback) -> None:
        if self._finished_with is not None:
            callback(self._finished_with[0])
        else:
            self._then = callback

    def _finished(self, error: BaseException | None) -> None:
        self._finished_with = [error]
        then, self._then = self._then, None
        if then is not None:
            then(error)

    # producer side
    def feed(self, data: bytes) -> None:
        if self._on_data is not None:
            self._on_data(data)
        elif self._pending is not None:
            self._pending.append(data)

    def end(self) -> None:
        if self._ended or self._error is not None:
            return
        self._ended = True
        if self._on_end is not None:
            self._on_end()
        self._finished(None)

    def fail(self, error: BaseException) -> None:
        if self._ended or self._error is not None:
            return
        self._error = error
        if self._on_error is not None:
            self._on_error(error)
        self._finished(error)

    def cancel(self) -> None:
        """The consumer is gone: the producer stops."""
        if self._ended or self._error is not None:
            return
        self._error = asyncio.CancelledError()
        self._on_data = self._on_end = self._on_error = None
        if self._cancel is not None:
            self._cancel()
        self._finished(self._error)

    # consumer side
    def start(self, on_data, on_end, on_error) -> None:
        pending, self._pending = self._pending, None
        for data in pending or ():
            on_data(data)
        self._on_data, self._on_end, self._on_error = on_data, on_end, on_error
        if self._error is not None:
            on_error(self._error)
        elif self._ended:
            on_end()

    def pause(self) -> None:
        if self._pause is not None:
            self._pause()

    def resume(self) -> None:
        if self._resume is not None:
            self._resume()


class Stream:
    __slots__ = ("status", "headers", "source")

    def __init__(self, status: int, headers, source: BodySource):
        self.status = status
        self.headers = headers
        self.source = source


# -- the server side ------------------------------------------------------------------------------

_HEAD, _BODY, _DONE = 0, 1, 2


class HttpConnection(asyncio.Protocol):
    """One caller's connection: parses its requests, answers them in order."""

    def __init__(self, server: HttpServer):
        self.server = server
        self.limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque = deque()  # parsed requests (or an HttpError) not yet answered
        self.busy = False  # a request is being answered
        self.closed = False
        self.failed = False  # the input cannot be parsed further; closing after the answers
        self.phase = _DONE  # of the request being received
        self.deadline = 0.0  # when the request being received times out (0: none)
        self.last_active = time.monotonic()
        self.head_seen = 0
        self.reading = True
        self.stream: BodySource | None = None
        self.pending: asyncio.Future | None = None  # the handler's answer being waited for
        self._request: Request | None = None
        self._url: list[bytes] = []
        self._body: list[bytes] = []
        self._size = 0

    # asyncio callbacks -----------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_HIGH_WATER)
        self.server.connections.add(self)

    def connection_lost(self, exc):
        self.closed = True
        self.server.connections.discard(self)
        if self.pending is not None and not self.pending.done():
            self.pending.cancel()  # the caller is gone: the handler's side lets the work go
        if self.stream is not None:
            stream, self.stream = self.stream, None
            stream.cancel()
        self.server._connection_closed(self)

    def pause_writing(self):
        if self.stream is not None:
            self.stream.pause()

    def resume_writing(self):
        if self.stream is not None:
            self.stream.resume()

    def data_received(self, data):
        if self.failed or self.closed:
            return
        self.last_active = time.monotonic()
        in_head = self.phase == _HEAD
        queued = len(self.queue)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            error = e.__context__
            if not isinstance(error, HttpError):
                log.error("failed while reading a request", exc_info=error)
                error = HttpError(500, "the server failed while reading the request")
            self._fail(error)
            return
        except httptools.HttpParserUpgrade:
            self._fail(HttpError(400, "protocol upgrades are not supported here"), quiet=True)
            return
        except httptools.HttpParserError as e:
            self._fail(HttpError(400, f"malformed HTTP request ({e}); send HTTP/1.1"))
            return
        if self.phase == _HEAD:
            # llhttp keeps a head's pieces until it ends: bound what it may hold
            if in_head and len(self.queue) == queued:
                self.head_seen += len(data)
            if self.head_seen > self.limits.head_size:
                self._fail(HttpError(431, f"the request head is larger than "
                                          f"{self.limits.head_size // 1024} KiB"))
                return
        if len(self.queue) > MAX_PIPELINED and self.reading:
            self.reading = False
            self.transport.pause_reading()

    # llhttp callbacks ------------------------------------------------------------------------

    def on_message_begin(self):
        self.phase = _HEAD
        self.head_seen = 0
        self.deadline = time.monotonic() + self.limits.head_timeout
        self._url = []
        self._request = request = Request()
        request.headers = []
        request.raw_headers = []
        self._size = 0

    def on_url(self, url: bytes):
        self._url.append(url)
        self._size += len(url)

    def on_header(self, name: bytes, value: bytes):
        self._size += len(name) + len(value) + 4
        if self._size > self.limits.head_size:
            raise HttpError(431, f"the request head is larger than {self.limits.head_size // 1024} KiB")
        request = self._request
        request.headers.append((name.lower(), value))
        request.raw_headers.append((name, value))

    def on_headers_complete(self):
        parser = self.parser
        request = self._request
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are spoken here")
        request.version = version
        request.method = parser.get_method().decode("latin-1")
        target = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        request.target = target
        path, _, query = target.partition(b"?")
        if path[:1] != b"/":  # absolute form: http://host/path
            try:
                url = httptools.parse_url(target)
            except httptools.HttpParserInvalidURLError:
                raise HttpError(400, "the request target is not a valid URL") from None
            path, query = url.path or b"/", url.query or b""
        request.path = path.decode("latin-1")
        request.query = query.decode("latin-1")
        request.keep_alive = parser.should_keep_alive()
        length = None
        chunked = False
        expect = None
        for name, value in request.headers:
            if name == b"content-length":
                length = int(value)  # llhttp has checked it is digits, and not given twice
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"expect":
                expect = value.lower()
        request.content_length = length
        request.chunked = chunked
        limit = self.limits.body_size
        if length is not None and length > limit:
            raise HttpError(413, f"the request body is larger than {_size_text(limit)}; "
                                 "send less per request")
        check = self.server.check_head
        if check is not None:
            check(request)
        if request.has_body:
            self.phase = _BODY
            self.deadline = time.monotonic() + self.limits.body_timeout
            if expect == b"100-continue" and not self.queue and not self.busy:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._body = []
        self._size = 0

    def on_body(self, data: bytes):
        self._size += len(data)
        if self._size > self.limits.body_size:
            raise HttpError(413, f"the request body is larger than "
                                 f"{_size_text(self.limits.body_size)}; send less per request")
        self._body.append(data)

    def on_message_complete(self):
        request = self._request
        body = self._body
        request.body = body[0] if len(body) == 1 else b"".join(body)
        self._request = None
        self._body = []
        self.phase = _DONE
        self.deadline = 0.0
        self.queue.append(request)
        if not self.busy:
            self._next()

    # answering -------------------------------------------------------------------------------

    def _fail(self, error: HttpError, quiet: bool = False) -> None:
        """Stop reading; answer what was parsed before, then this error, then close."""
        self.failed = True
        self.phase = _DONE
        self.deadline = 0.0
        if not quiet and error.status >= 500 and error.status != 505:
            log.warning("answering %d: %s", error.status, error.message)
        error.close = True
        self.queue.append(error)
        if not self.busy:
            self._next()

    def _next(self) -> None:
        while self.queue and not self.busy and not self.closed:
            item = self.queue.popleft()
            if not self.reading and len(self.queue) <= MAX_PIPELINED // 2 and not self.failed:
                self.reading = True
                self.transport.resume_reading()
            if isinstance(item, HttpError):
                self._send_error(None, item)
                return
            self.busy = True
            try:
                result = self.server.handler(item)
            except HttpError as e:
                self.busy = False
                self._send_error(item, e)
                continue
            except Exception:  # noqa: BLE001 - a bug here must still answer
                log.exception("failed on %s %s", item.method, item.path)
                self.busy = False
                self._send_error(item, HttpError(500, "the server failed on this request", close=True))
                return
            if isinstance(result, (tuple, Stream)):
                self._respond(item, result)
            else:
                self.pending = future = asyncio.ensure_future(result)
                future.add_done_callback(lambda f, r=item: self._settled(r, f))
                return

    def _settled(self, request: Request, future: asyncio.Future) -> None:
        self.pending = None
        if self.closed:
            self.busy = False
            if not future.cancelled() and future.exception() is None:
                result = future.result()
                if isinstance(result, Stream):
                    result.source.cancel()
            return
        if future.cancelled():
            self.busy = False
            if not self.closed:
                self.transport.close()
            return
        error = future.exception()
        if error is None:
            self._respond(request, future.result())
        else:
            self.busy = False
            if isinstance(error, HttpError):
                self._send_error(request, error)
            else:
                log.error("failed on %s %s", request.method, request.path, exc_info=error)
                self._send_error(request, HttpError(500, "the server failed on this request", close=True))
        if not self.busy:
            self._next()

    def _keep(self, request: Request | None) -> bool:
        return (request is not None and request.keep_alive and not self.failed
                and not self.server.draining)

    def _respond(self, request: Request, result) -> None:
        if self.closed:
            self.busy = False
            return
        if isinstance(result, Stream):
            self._start_stream(request, result)
            return
        status, headers, body = result
        self._write(request, status, headers, body, self._keep(request))
        self.busy = False

    def _send_error(self, request: Request | None, error: HttpError) -> None:
        keep = self._keep(request) and not error.close
        self._write(request, error.status, [(b"Content-Type", b"application/json"), *error.headers],
                    error_body(error.message), keep)

    def _head(self, status: int, headers, keep: bool, framing: bytes) -> list[bytes]:
        server = self.server
        out = [status_line(status)]
        if server.server_header:
            out.append(server.server_header)
        if server.date:
            out.append(_Date.header())
        out += _encode_headers(headers)
        default = server.default_content_type
        if default:
            for name in headers if isinstance(headers, dict) else (h[0] for h in headers):
                if (name if isinstance(name, bytes) else name.encode()).lower() == b"content-type":
                    break
            else:
                out.append(default)
        out.append(framing)
        if not keep:
            out.append(b"Connection: close\r\n")
        out.append(b"\r\n")
        return out

    def _write(self, request: Request | None, status: int, headers, body: bytes, keep: bool) -> None:
        transport = self.transport
        if self.closed or transport.is_closing():
            return
        out = self._head(status, headers, keep, b"Content-Length: %d\r\n" % len(body))
        if request is None or request.method != "HEAD":
            out.append(body)
        transport.write(b"".join(out))
        self.last_active = time.monotonic()
        if not keep:
            self._close()

    def _close(self) -> None:
        self.closed = True
        self.queue.clear()
        self.transport.close()

    def _start_stream(self, request: Request, result: Stream) -> None:
        keep = self._keep(request) and request.version == "1.1"
        head_only = request.method == "HEAD"
        framing = b"Transfer-Encoding: chunked\r\n" if keep and not head_only else b""
        self.transport.write(b"".join(self._head(result.status, result.headers, keep, framing)))
        source = result.source
        if head_only:
            source.pause()
            source.start(lambda data: None, lambda: None, lambda e: None)
            self._stream_done(keep)
            return
        self.stream = source
        write = self.transport.write
        if keep:
            def on_data(data):
                if data:
                    write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            on_data = write

        def on_end():
            self.stream = None
            if not self.closed and keep:
                write(b"0\r\n\r\n")
            self._stream_done(keep)

        def on_error(error):
            self.stream = None
            log.warning("a streamed answer broke off: %s", error or type(error).__name__)
            if not self.closed:
                self.transport.close()  # the head is out: the caller sees the answer cut short
            self.closed = True
            self.busy = False

        source.start(on_data, on_end, on_error)
        if self.stream is not None and self.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            source.pause()

    def _stream_done(self, keep: bool) -> None:
        self.busy = False
        self.last_active = time.monotonic()
        if not keep:
            if not self.closed:
                self._close()
            return
        self._next()

    # timeouts --------------------------------------------------------------------------------

    def check_time(self, now: float) -> None:
        if self.closed:
            return
        if self.deadline and now > self.deadline and not self.failed:
            what = "head" if self.phase == _HEAD else "body"
            self._fail(HttpError(408, f"the request {what} did not arrive within "
                                      f"{self.limits.head_timeout if what == 'head' else self.limits.body_timeout:g} s"),
                       quiet=True)
        elif not self.busy and not self.queue and self.phase == _DONE and \
                now - self.last_active > self.limits.idle_timeout:
            self._close()

    @property
    def in_flight(self) -> bool:
        return self.busy or bool(self.queue) or self.phase != _DONE

    def close_if_idle(self) -> None:
        if not self.closed and not self.in_flight:
            self._close()


def _size_text(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 else f"{n // 1024} KiB"


class HttpServer:
    """Listens and serves ``handler`` (see the module's docstring)."""

    def __init__(self, handler, limits: Limits | None = None, *, check_head=None,
                 server_header: bytes | None = None, date: bool = True,
                 default_content_type: bytes | None = b"application/json"):
        self.handler = handler
        self.default_content_type = (b"Content-Type: " + default_content_type + b"\r\n"
                                     if default_content_type else b"")
        self.check_head = check_head
        self.limits = limits or Limits()
        self.server_header = b"Server: " + server_header + b"\r\n" if server_header else b""
        self.date = date
        self.connections: set[HttpConnection] = set()
        self.draining = False
        self.server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task | None = None
        self._drained: asyncio.Future | None = None

    async def listen(self, host: str | None = None, port: int | None = None, *, sock=None,
                     backlog: int = 1024) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        if sock is not None:
            self.server = await loop.create_server(lambda: HttpConnection(self), sock=sock,
                                                   backlog=backlog)
        else:
            self.server = await loop.create_server(lambda: HttpConnection(self), host, port,
                                                   backlog=backlog, reuse_address=True)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        return self.server

    @property
    def sockets(self):
        return self.server.sockets if self.server is not None else ()

    async def _sweep(self) -> None:
        limits = self.limits
        tick = min(max(min(limits.head_timeout, limits.body_timeout, limits.idle_timeout) / 4, 0.02), 1.0)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.check_time(now)

    @property
    def in_flight(self) -> int:
        return sum(1 for c in self.connections if c.in_flight)

    def _connection_closed(self, conn: HttpConnection) -> None:
        if self._drained is not None and not self._drained.done() and not self.in_flight:
            self._drained.set_result(None)

    async def drain(self, grace: float) -> int:
        """Stop accepting; close idle connections, and the others once their request is
        answered; wait up to ``grace`` seconds. Returns how many requests were still in flight."""
        self.draining = True
        if self.server is not None:
            self.server.close()
        deadline = time.monotonic() + grace
        while True:
            for conn in list(self.connections):
                conn.close_if_idle()
            left = self.in_flight
            if not left or time.monotonic() >= deadline:
                return left
            self._drained = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._drained),
                                       min(0.05, max(deadline - time.monotonic(), 0)))
            except asyncio.TimeoutError:
                pass

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()


# -- the client side: forwarding to an upstream server --------------------------------------------


class UpstreamError(Exception):
    """The upstream server's answer was not HTTP/1.x, or broke off."""


class UpstreamResponse:
    __slots__ = ("status", "headers", "body", "source", "keep_alive")

    def __init__(self, status: int, headers: list, body: bytes | None, source: BodySource | None,
                 keep_alive: bool):
        self.status = status
        self.headers = headers  # [(name, value)], as sent
        self.body = body  # the whole body, or None when ``source`` streams it
        self.source = source
        self.keep_alive = keep_alive


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream server; one request at a time."""

    def __init__(self, upstream: Upstream):
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.future: asyncio.Future | None = None
        self.source: BodySource | None = None
        self.headers: list = []
        self.body: list[bytes] = []
        self.buffering = False
        self.status = 0
        self.head_only = False
        self.closed = False
        self.since = 0.0

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.closed = True
        error = UpstreamError(f"the connection closed: {exc}" if exc else "the connection closed")
        if self.future is not None and not self.future.done():
            self.future.set_exception(error)
        if self.source is not None:
            self.source.fail(error)
            self.source = None

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._broken(UpstreamError(f"not an HTTP/1.x answer: {e}"))

    def _broken(self, error: Exception) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_exception(error)
        if self.source is not None:
            self.source.fail(error)
            self.source = None
        self.closed = True
        self.transport.abort()

    def request(self, data: bytes, head_only: bool = False) -> asyncio.Future:
        self.future = future = asyncio.get_running_loop().create_future()
        self.head_only = head_only
        self.headers = []
        self.body = []
        self.status = 0
        self.transport.write(data)
        return future

    # llhttp callbacks
    def on_header(self, name, value):
        self.headers.append((name, value))

    def on_headers_complete(self):
        status = self.parser.get_status_code()
        if status < 200:  # interim answers (100 Continue) are dropped
            self.headers = []
            return
        if status == 101:
            raise UpstreamError("protocol upgrades are not supported")
        self.status = status
        length = None
        for name, value in self.headers:
            if len(name) == 14 and name.lower() == b"content-length":
                length = int(value)
                break
        keep = self.parser.should_keep_alive()
        if self.head_only or status in (204, 304):
            # llhttp does not know the request was HEAD: the connection is not reused
            self._resolve(UpstreamResponse(status, self.headers, b"", None, False))
            if self.head_only:
                self.closed = True
                self.transport.close()
            return
        if length is not None and length <= SMALL_BODY:
            self.buffering = True
            return
        self.buffering = False
        self.source = BodySource(self._pause, self._resume, self.abandon)
        self._resolve(UpstreamResponse(status, self.headers, None, self.source, keep))

    def on_body(self, data):
        if self.buffering:
            self.body.append(data)
        elif self.source is not None:
            self.source.feed(data)

    def on_message_complete(self):
        if self.status < 200 or self.closed:
            return
        keep = self.parser.should_keep_alive()
        if self.buffering:
            body = self.body
            self.buffering = False
            self._resolve(UpstreamResponse(self.status, self.headers,
                                           body[0] if len(body) == 1 else b"".join(body), None, keep))
        elif self.source is not None:
            source, self.source = self.source, None
            self._resume()
            source.end()
        self.future = None
        if keep:
            self.upstream.release(self)
        else:
            self.closed = True
            self.transport.close()

    def _resolve(self, response: UpstreamResponse) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_result(response)

    def _pause(self):
        if not self.closed:
            self.transport.pause_reading()

    def _resume(self):
        if not self.closed:
            self.transport.resume_reading()

    def abandon(self) -> None:
        """The caller went away mid-answer: this connection cannot carry on."""
        self.future = None
        source, self.source = self.source, None
        if source is not None:
            source.cancel()
        if not self.closed:
            self.closed = True
            self.transport.abort()


class Upstream:
    """A server requests are forwarded to, with its pool of idle keep-alive connections."""

    def __init__(self, host: str, port: int, *, max_idle: int = 128, idle_timeout: float = 4.0,
                 connect_timeout: float = 5.0):
        self.host = host
        self.port = port
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout  # below the upstream's own, so a pooled one is never stale
        self.connect_timeout = connect_timeout
        self.idle: list[UpstreamConnection] = []
        self.retired = False

    def pooled(self) -> UpstreamConnection | None:
        """An idle connection that is still open, or None."""
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if conn.closed or conn.transport.is_closing() or now - conn.since > self.idle_timeout:
                conn.closed = True
                conn.transport.close()
                continue
            return conn
        return None

    async def connect(self) -> UpstreamConnection:
        """A new connection (OSError/TimeoutError when the server cannot be reached: nothing
        was sent to it)."""
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port),
            self.connect_timeout)
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        if self.retired or len(self.idle) >= self.max_idle or conn.closed or conn.transport.is_closing():
            conn.closed = True
            conn.transport.close()
        else:
            conn.since = time.monotonic()
            self.idle.append(conn)

    def close_idle(self, older_than: float | None = None) -> None:
        cutoff = None if older_than is None else time.monotonic() - older_than
        keep = []
        for conn in self.idle:
            if cutoff is not None and conn.since >= cutoff:
                keep.append(conn)
            else:
                conn.closed = True
                conn.transport.close()
        self.idle = keep
