"""Malformed HTTP sent straight to a deployment's URL (the router's public port) and to a
replica's own port: each gets a clear 4xx JSON answer and a closed connection, never a hang or a
5xx, and the server goes on answering well-formed requests.

Real processes on real sockets: a model server (``python -m fermi_extension.serving.server``)
with its replica key, and the router (``python -m fermi_extension.serving.router``) routing a
deployment to it, both started with short head/body timeouts (``--head-timeout``,
``--body-timeout``) so the slow-client cases take a second, not a minute.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fermi_extension.processes import free_port, wait_for
from fermi_extension.serving.replica_key import replica_key

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "malformed-http-admin-token"
API_KEY = "fk-malformed-http"
TIMEOUT = 0.6  # the servers' head and body timeouts here
ANSWER_WITHIN = 10.0  # no case may take longer than this to be answered


class Target:
    def __init__(self, port: int, prefix: str, auth: str):
        self.port = port
        self.prefix = prefix  # the path before /v2
        self.auth = auth  # the Authorization value a well-formed request shows


@pytest.fixture(scope="module")
def servers(model_dir, tmp_path_factory):
    """{"replica": Target, "router": Target}: one replica, and the router in front of it."""
    tmp = tmp_path_factory.mktemp("servers")
    timeouts = ["--head-timeout", str(TIMEOUT), "--body-timeout", str(TIMEOUT)]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key = replica_key(ADMIN_TOKEN, url)
    env = {k: v for k, v in os.environ.items() if k != "FERMI_REPLICA_KEY"}
    logs = []
    replica_log = open(tmp / "replica.log", "w+b")
    logs.append(replica_log)
    replica = subprocess.Popen(
        [sys.executable, "-m", "fermi_extension.serving.server", "--model-dir", str(model_dir),
         "--model-name", "wine", "--model-version", "1", "--port", str(port), *timeouts],
        cwd=ROOT, env={**env, "FERMI_REPLICA_KEY": key}, stdout=replica_log,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    routes = tmp / "routes.json"
    routes.write_text(json.dumps({"generation": 1, "deployments": {"wine": {
        "owner": "alice", "key_hashes": [hashlib.sha256(API_KEY.encode()).hexdigest()],
        "revisions": [{"name": "r1", "traffic_percent": 100,
                       "replicas": [{"id": "wine-r1-a", "url": url, "state": "ready"}]}]}}}))
    (tmp / "admin-token").write_text(ADMIN_TOKEN)
    public, admin = free_port(), free_port()
    router_log = open(tmp / "router.log", "w+b")
    logs.append(router_log)
    router = subprocess.Popen(
        [sys.executable, "-m", "fermi_extension.serving.router", "--port", str(public),
         "--routes", str(routes), "--admin-port", str(admin), "--admin-token-file",
         str(tmp / "admin-token"), *timeouts],
        cwd=ROOT, env=env, stdout=router_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{public}/wine/v2/models/wine/ready",
                             headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert wait_for(lambda: ready() or replica.poll() is not None or router.poll() is not None,
                        60, 0.05) and ready(), b"".join(
            (f.seek(0), f.read())[1] for f in logs).decode(errors="replace")
        yield {"replica": Target(port, "", f"Bearer {key}"),
               "router": Target(public, "/wine", f"Bearer {API_KEY}")}
    finally:
        for process in (router, replica):
            process.kill()
            process.wait()
        for f in logs:
            f.close()


@pytest.fixture(params=["router", "replica"])
def target(request, servers) -> Target:
    return servers[request.param]


def read_answer(sock: socket.socket, trickle: bytes = b"") -> tuple[int, dict, bytes, bool]:
    """(status, headers, body, closed) of the one answer on ``sock``; while waiting, one byte
    of ``trickle`` is sent every 0.1 s (a slow client). Fails after ANSWER_WITHIN seconds."""
    deadline = time.monotonic() + ANSWER_WITHIN
    data = b""
    closed = False
    while True:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end].decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
            length = int(headers.get("content-length", 0))
            if len(data) >= head_end + 4 + length:
                status = int(head[0].split(" ")[1])
                body = data[head_end + 4:head_end + 4 + length]
                break
        if closed:
            raise AssertionError(f"the connection closed before a whole answer: {data!r}")
        left = deadline - time.monotonic()
        assert left > 0, f"no answer within {ANSWER_WITHIN} s (got {data!r})"
        readable, _, _ = select.select([sock], [], [], min(0.1, left))
        if readable:
            chunk = sock.recv(65536)
            closed = not chunk
            data += chunk
        elif trickle:
            try:
                sock.sendall(trickle[:1])
            except OSError:
                pass
            trickle = trickle[1:]
    if not closed:  # after an error the server must close: wait for it, within the deadline
        sock.settimeout(max(deadline - time.monotonic(), 0.1))
        try:
            closed = sock.recv(65536) == b""
        except TimeoutError:
            closed = False
        except OSError:
            closed = True
    return status, headers, body, closed


def exchange(target: Target, data: bytes, trickle: bytes = b"") -> tuple[int, dict, bytes, bool]:
    with socket.create_connection(("127.0.0.1", target.port), timeout=ANSWER_WITHIN) as sock:
        sock.sendall(data)
        return read_answer(sock, trickle)


def assert_refused(answer, status: int, words: str = "") -> str:
    got, headers, body, closed = answer
    assert got == status, answer
    assert headers.get("content-type") == "application/json"
    message = json.loads(body)["error"]
    assert words in message, message
    assert headers.get("connection") == "close" and closed, answer
    return message


def still_answers(target: Target) -> None:
    response = httpx.get(f"http://127.0.0.1:{target.port}{target.prefix}/v2/models/wine",
                         headers={"Authorization": target.auth})
    assert response.status_code == 200 and response.json()["name"] == "wine"


def client_hello() -> bytes:
    """The first bytes a TLS client sends: a real ClientHello from Python's ssl module."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[0] == 0x16  # a handshake record
    return hello


def test_json_nested_thousands_deep_is_400(target):
    body = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    head = (f"POST {target.prefix}/v2/models/wine/infer HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {target.auth}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    status, headers, answer, _ = exchange(target, head + body)
    assert status == 400, answer
    assert "nested too deeply" in json.loads(answer)["error"]
    still_answers(target)


def test_a_chunk_size_that_is_not_hex_is_400(target):
    head = (f"POST {target.prefix}/v2/models/wine/infer HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {target.auth}\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    assert_refused(exchange(target, head + b"zz\r\nhello\r\n0\r\n\r\n"), 400, "chunk size")
    still_answers(target)


def test_a_content_length_of_many_gigabytes_is_413_at_once(target):
    head = (f"POST {target.prefix}/v2/models/wine/infer HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {target.auth}\r\nContent-Length: {64 * 2**30}\r\n\r\n").encode()
    started = time.monotonic()
    message = assert_refused(exchange(target, head + b"[1, 2"), 413, "larger than 64 MiB")
    assert time.monotonic() - started < TIMEOUT, "413 must come at the head, not after a timeout"
    assert "send less" in message
    still_answers(target)


def test_tls_bytes_on_the_plain_port_are_400_and_closed(target):
    assert_refused(exchange(target, client_hello()), 400, "malformed HTTP request")
    still_answers(target)


def test_a_request_line_ended_by_a_bare_lf_is_answered(target):
    status, headers, body, closed = exchange(
        target, f"GET {target.prefix}/v2/health/live HTTP/1.1\nHost: x\n\n".encode())
    assert status in (200, 400), body  # llhttp refuses it; a lenient parser could answer it
    if status == 400:
        assert json.loads(body)["error"] and closed


def test_a_head_too_large_is_431(target):
    head = (f"GET {target.prefix}/v2/health/live HTTP/1.1\r\nHost: x\r\n"
            f"X-Padding: {'a' * 100_000}\r\n\r\n").encode()
    assert_refused(exchange(target, head), 431, "head is larger")


def test_a_head_trickled_past_the_timeout_is_408(target):
    started = time.monotonic()
    answer = exchange(target, f"GET {target.prefix}/v2/health/live HTTP/1.1\r\n".encode(),
                      trickle=b"X-Slow: " + b"a" * 200)
    assert_refused(answer, 408, "head did not arrive")
    assert TIMEOUT <= time.monotonic() - started < TIMEOUT + 3


def test_a_body_trickled_past_the_timeout_is_408(target):
    head = (f"POST {target.prefix}/v2/models/wine/infer HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {target.auth}\r\nContent-Length: 400\r\n\r\n").encode()
    started = time.monotonic()
    assert_refused(exchange(target, head + b'{"inputs"', trickle=b" " * 300), 408,
                   "body did not arrive")
    assert TIMEOUT <= time.monotonic() - started < TIMEOUT + 3
    still_answers(target)


def test_pipelined_keep_alive_requests_still_work_after_all_that(target):
    one = (f"GET {target.prefix}/v2/models/wine HTTP/1.1\r\nHost: x\r\n"
           f"Authorization: {target.auth}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", target.port), timeout=ANSWER_WITHIN) as sock:
        sock.sendall(one * 3)
        data = b""
        deadline = time.monotonic() + ANSWER_WITHIN
        while data.count(b"HTTP/1.1 200 ") < 3 or not data.rstrip().endswith(b"}"):
            assert time.monotonic() < deadline, data
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    assert data.count(b"HTTP/1.1 200 ") == 3 and b"Connection: close" not in data
