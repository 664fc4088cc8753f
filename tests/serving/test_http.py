"""The HTTP layer of the router and the replicas (``fermi_extension.serving.http``), in process:
a real ``HttpServer`` on a real port, real clients (raw sockets, httpx) and the layer's own
``Upstream`` client. The malformed-input cases against the real processes are in
``test_malformed_http.py``.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from fermi_extension.serving.http import (BodySource, HttpError, HttpServer, Limits, Stream,
                                          Upstream)


@pytest.fixture
async def serve():
    """``await serve(handler, **options)`` -> (server, port); every server is closed after."""
    servers = []

    async def start(handler, **options):
        server = HttpServer(handler, **options)
        await server.listen("127.0.0.1", 0)
        servers.append(server)
        return server, server.sockets[0].getsockname()[1]

    yield start
    for server in servers:
        server.close()


async def read_until(reader: asyncio.StreamReader, count: int, marker: bytes = b"HTTP/1.1 ") -> bytes:
    data = b""
    async with asyncio.timeout(5):
        while data.count(marker) < count or not data.endswith(b"}"):
            chunk = await reader.read(65536)
            assert chunk, data
            data += chunk
    return data


async def test_pipelined_requests_are_answered_in_order_even_when_the_first_is_slow(serve):
    loop = asyncio.get_running_loop()

    def handler(request):
        if request.path == "/slow":
            future = loop.create_future()
            loop.call_later(0.2, future.set_result, (200, (), b'{"which":"slow"}'))
            return future
        return 200, (), json.dumps({"which": request.path[1:], "body": request.body.decode()}).encode()

    _, port = await serve(handler)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"POST /fast HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                 b"GET /last HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await read_until(reader, 3)
    writer.close()
    bodies = [json.loads(part.split(b"\r\n\r\n", 1)[1]) for part in data.split(b"HTTP/1.1 ")[1:]]
    assert bodies == [{"which": "slow"}, {"which": "fast", "body": "abcde"},
                      {"which": "last", "body": ""}]
    assert b"Connection: close" not in data


async def test_errors_of_handlers_are_json_4xx_or_500_and_head_gets_no_body(serve):
    def handler(request):
        if request.path == "/missing":
            raise HttpError(404, "no such thing; try /here")
        if request.path == "/bug":
            raise RuntimeError("a bug")
        return 200, {"X-Answer": "42"}, b'{"ok":true}'

    _, port = await serve(handler, server_header=b"test-server")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        missing = await client.get("/missing")
        assert missing.status_code == 404 and missing.json() == {"error": "no such thing; try /here"}
        assert missing.headers.get("connection") != "close"  # a handled 4xx keeps the connection
        bug = await client.get("/bug")
        assert bug.status_code == 500 and bug.headers["connection"] == "close"
        assert "a bug" not in bug.text  # nothing of the server's insides is shown
        head = await client.head("/here")
        assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == "11"
        ok = await client.get("/here")
        assert ok.json() == {"ok": True} and ok.headers["x-answer"] == "42"
        assert ok.headers["server"] == "test-server" and ok.headers["content-type"] == "application/json"


async def test_check_head_refuses_before_the_body_or_a_100_continue(serve):
    seen = []

    def check(request):
        if request.header(b"authorization") != b"Bearer right":
            raise HttpError(401, "show the right key")

    def handler(request):
        seen.append(request.body)
        return 200, (), b"{}"

    _, port = await serve(handler, check_head=check)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    data = await read_until(reader, 1)
    assert data.startswith(b"HTTP/1.1 401 ") and b"100 Continue" not in data
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # closed
    writer.close()
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"http://127.0.0.1:{port}/", content=b"hello",
                                   headers={"Authorization": "Bearer right"})
    assert answer.status_code == 200 and seen == [b"hello"]


async def test_idle_keep_alive_connections_are_closed(serve):
    server, port = await serve(lambda request: (200, (), b"{}"), limits=Limits(idle_timeout=0.2))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await read_until(reader, 1)
    async with asyncio.timeout(3):
        assert await reader.read() == b""
    writer.close()
    assert not server.connections


async def test_upstream_pools_connections_and_streams_answers_piece_by_piece(serve):
    loop = asyncio.get_running_loop()
    pieces = [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n"]
    sources = []

    def handler(request):
        if request.path == "/stream":
            source = BodySource()
            sources.append(source)
            return Stream(200, [("Content-Type", "text/event-stream")], source)
        return 200, (), b'{"short":true}'

    _, port = await serve(handler)
    upstream = Upstream("127.0.0.1", port)
    conn = await upstream.connect()
    first = await conn.request(b"GET /short HTTP/1.1\r\nHost: x\r\n\r\n")
    assert first.status == 200 and first.body == b'{"short":true}' and first.source is None
    assert upstream.pooled() is conn  # back in the pool once answered, and reused

    streamed = await conn.request(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    assert streamed.status == 200 and streamed.body is None
    got: list[bytes] = []
    ended = loop.create_future()
    streamed.source.start(got.append, lambda: ended.set_result(None), ended.set_exception)
    for piece in pieces:
        sources[0].feed(piece)
        async with asyncio.timeout(5):
            while b"".join(got) != b"".join(pieces[:pieces.index(piece) + 1]):
                await asyncio.sleep(0)  # each piece arrives before the next is even sent
    sources[0].end()
    await asyncio.wait_for(ended, 5)
    assert b"".join(got) == b"".join(pieces)
    async with asyncio.timeout(5):
        while not upstream.idle:
            await asyncio.sleep(0)
    assert upstream.pooled() is conn
    upstream.close_idle()
