"""The router of the inference services on one machine.

One process serves every deployment's stable URL ``/{deployment}/...``, authenticates each
request and balances it over the deployment's model-server replicas. The control plane tells it
what exists through a routes file that it rewrites atomically; the router polls the file (every
50 ms) and swaps its table in place, so nothing restarts and no request in flight is dropped. A
bad file is logged and the last good table kept. The control plane starts it so (keep stable)::

    python -m fermi_extension.serving.router --port PUBLIC_PORT --host HOST --routes ROUTES_JSON \\
        --admin-port ADMIN_PORT --admin-token-file FILE [--hub-api-url URL]

Routes file: ``{"generation": N, "deployments": {NAME: {"owner", "admins_allowed", "key_hashes":
[sha256 hex of API keys], "revisions": [{"name", "traffic_percent", "replicas": [{"id", "url":
"http://127.0.0.1:PORT", "state": "ready" | "draining" | other}]}]}}}``; other fields are ignored.

Public side: ``/{deployment}/{rest}`` goes to a replica as ``/{rest}`` (query, body and headers
kept, minus hop-by-hop ones, ``Authorization`` and ``X-API-Key``; the answer is streamed back).
Replicas accept only the router: each request to a replica carries ``Authorization: Bearer
<replica key>``, the HMAC-SHA256 of the replica's URL under the admin token
(``fermi_extension.serving.replica_key``), which the control plane handed the replica at start;
a caller that goes to a replica's own address round the router gets 401 there.
``/{deployment}/v2/health/live|ready`` are answered here without credentials. Callers show
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, or ``Authorization: token <hub token>``
of the owner (or of an admin when ``admins_allowed``). A revision is drawn at random by
``traffic_percent``, then its ready replica with the fewest requests in flight; a replica that
cannot be connected to is skipped (up to 3 tries), a request that reached one is never retried.

Admin side, on 127.0.0.1 with ``Authorization: token <admin token>``: ``GET /healthz``
(``{"ok", "generation", "replica_keys": true}``; the last says this router sends replica keys) and
``GET /stats``: per deployment ``in_flight``, ``requests`` (authenticated requests since start),
``errors`` (5xx answers + failed connection attempts), ``latency_ms`` (``p50``/``p99``/``count``
over the last 60 s, 0.0 when none), and per replica and per revision their counters.

HTTP/1.1 is spoken directly over asyncio streams on both sides: on a 2-core machine, where the
router shares the cores with the replicas, aiohttp's server and client together cost several
times more CPU per request (~3,500 vs ~16,000 proxied requests/s measured side by side).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import math
import os
import random
import signal
import sys
import time
from array import array
from collections import OrderedDict
from urllib.parse import urlsplit

from fermi_extension.serving.replica_key import replica_key

log = logging.getLogger("fermi.router")

HEAD_LIMIT = 64 * 1024  # largest request or response head accepted
SMALL_BODY = 64 * 1024  # request bodies up to this size are read whole and sent in one write
COPY_SIZE = 64 * 1024
WRITE_HIGH_WATER = 256 * 1024  # wait for a slow reader once this much is buffered
CONNECT_TIMEOUT = 5.0
MAX_TRIES = 3  # connection attempts per request; only attempts that never reached a replica are retried
EJECT_SECONDS = 2.0  # a replica that refused a connection is tried last for this long
CLIENT_IDLE_TIMEOUT = 75.0
UPSTREAM_IDLE_TIMEOUT = 4.0  # below uvicorn's 5 s keep-alive, so a pooled connection is never stale
UPSTREAM_MAX_IDLE = 128  # idle pooled connections kept per replica
ROUTES_POLL_SECONDS = 0.05
LATENCY_WINDOW_SECONDS = 60.0
LATENCY_SAMPLES = 8192  # ring buffer size per deployment
HUB_CACHE_SECONDS = 60.0
HUB_NEGATIVE_CACHE_SECONDS = 5.0
HUB_CACHE_SIZE = 4096
HUB_TIMEOUT = 5.0
SHUTDOWN_GRACE = 10.0

# Request headers that describe this hop or carry the caller's credentials to the router.
REQUEST_DROP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization", b"proxy-authenticate",
    b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length", b"expect",
    b"authorization", b"x-api-key",
})
RESPONSE_DROP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"te", b"trailer",
    b"transfer-encoding", b"upgrade",
})
REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden",
           404: b"Not Found", 405: b"Method Not Allowed", 431: b"Request Header Fields Too Large",
           501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable",
           505: b"HTTP Version Not Supported"}


class RoutesError(ValueError):
    """The routes file is not a valid table; the message says what is wrong."""


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class BadResponse(Exception):
    """A replica answered something that is not HTTP/1.x."""


class HubUnavailable(Exception):
    pass


# -- the routing table -----------------------------------------------------------------------------


class Replica:
    """One model-server process; kept across table reloads (by id and url) with its counters and
    its pool of idle keep-alive connections."""

    __slots__ = ("id", "url", "host", "port", "host_header", "state", "in_flight", "requests",
                 "errors", "down_until", "idle", "retired")

    def __init__(self, replica_id: str, url: str, master: str = ""):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise RoutesError(f"replica {replica_id!r}: url must be http://HOST:PORT, not {url!r}")
        self.id = replica_id
        self.url = url
        self.host = parts.hostname
        self.port = parts.port
        # spliced into every request head after "Host: ": with the replica's key in it, the key
        # costs nothing per request
        self.host_header = parts.netloc.encode("latin-1")
        if master:
            self.host_header += b"\r\nAuthorization: Bearer " + replica_key(master, url).encode()
        self.state = "ready"
        self.in_flight = 0
        self.requests = 0
        self.errors = 0
        self.down_until = 0.0
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.retired = False

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A pooled connection that is still open, or a new one (OSError/TimeoutError when the
        replica cannot be reached: nothing was sent to it)."""
        now = time.monotonic()
        while self.idle:
            reader, writer, since = self.idle.pop()
            if reader.at_eof() or writer.is_closing() or now - since > UPSTREAM_IDLE_TIMEOUT:
                writer.close()
                continue
            return reader, writer
        return await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, limit=HEAD_LIMIT), CONNECT_TIMEOUT)

    def release(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.retired or len(self.idle) >= UPSTREAM_MAX_IDLE or reader.at_eof() or writer.is_closing():
            writer.close()
        else:
            self.idle.append((reader, writer, time.monotonic()))

    def close_idle(self, older_than: float | None = None) -> None:
        if older_than is None:
            keep = []
        else:
            cutoff = time.monotonic() - older_than
            keep = [c for c in self.idle if c[2] >= cutoff]
        for connection in self.idle:
            if connection not in keep:
                connection[1].close()
        self.idle = keep


class Revision:
    __slots__ = ("name", "traffic", "replicas", "ready", "rr")

    def __init__(self, name: str, traffic: float, replicas: list[Replica]):
        self.name = name
        self.traffic = traffic
        self.replicas = replicas
        self.ready = [r for r in replicas if r.state == "ready"]
        self.rr = 0


class LatencyWindow:
    """The latencies of the most recent requests (a fixed ring), reported over the last minute."""

    __slots__ = ("times", "values", "next", "size")

    def __init__(self, size: int = LATENCY_SAMPLES):
        self.times = array("d", bytes(8 * size))
        self.values = array("d", bytes(8 * size))
        self.next = 0
        self.size = size

    def add(self, at: float, seconds: float) -> None:
        i = self.next
        self.times[i] = at
        self.values[i] = seconds
        self.next = (i + 1) % self.size

    def percentiles(self, now: float, window: float = LATENCY_WINDOW_SECONDS) -> dict:
        cutoff = now - window
        times = self.times
        recent = sorted(v for t, v in zip(times, self.values) if t > cutoff and t != 0.0)
        n = len(recent)

        def rank(p: float) -> float:
            return round(recent[max(0, math.ceil(p * n) - 1)] * 1000, 3) if n else 0.0

        return {"p50": rank(0.50), "p99": rank(0.99), "count": n}


class DeploymentStats:
    """Counters of one deployment since the router started; they survive table reloads."""

    __slots__ = ("in_flight", "requests", "errors", "latency", "revision_requests")

    def __init__(self):
        self.in_flight = 0
        self.requests = 0
        self.errors = 0
        self.latency = LatencyWindow()
        self.revision_requests: dict[str, int] = {}


class Deployment:
    __slots__ = ("name", "owner", "admins_allowed", "key_hashes", "revisions", "routable", "stats")

    def __init__(self, name: str, owner: str, admins_allowed: bool, key_hashes: frozenset[str],
                 revisions: list[Revision], stats: DeploymentStats):
        self.name = name
        self.owner = owner
        self.admins_allowed = admins_allowed
        self.key_hashes = key_hashes
        self.revisions = revisions
        # revisions that take traffic; revisions at 0 % get nothing, not even retries
        self.routable = [r for r in revisions if r.traffic > 0]
        self.stats = stats

    @property
    def ready(self) -> bool:
        return any(r.ready for r in self.routable)


class RouteTable:
    __slots__ = ("generation", "deployments", "replicas")

    def __init__(self, generation: int = 0, deployments: dict[str, Deployment] | None = None,
                 replicas: dict[str, Replica] | None = None):
        self.generation = generation
        self.deployments = deployments or {}
        self.replicas = replicas or {}


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise RoutesError(message)


def parse_routes(doc, previous: RouteTable | None = None, master: str = "") -> RouteTable:
    """Build a table from the routes document, reusing the previous table's replicas (same id
    and url) and deployment counters so that in-flight counts, pools and stats carry over.
    Nothing of the previous table changes unless the whole document is valid. ``master`` (the
    admin token) derives the key each replica is sent; without it replicas are sent none."""
    previous = previous or RouteTable()
    _expect(isinstance(doc, dict), "the routes file must hold a JSON object")
    generation = doc.get("generation", 0)
    _expect(isinstance(generation, int) and not isinstance(generation, bool),
            "'generation' must be an integer")
    raw_deployments = doc.get("deployments", {})
    _expect(isinstance(raw_deployments, dict), "'deployments' must be an object")
    plan = []  # (name, owner, admins_allowed, key_hashes, [(revision, traffic, [(replica, state)])])
    replicas: dict[str, Replica] = {}
    for name, spec in raw_deployments.items():
        where = f"deployment {name!r}"
        _expect(isinstance(name, str) and name and "/" not in name and "?" not in name,
                f"{where}: bad name")
        _expect(isinstance(spec, dict), f"{where}: must be an object")
        owner = spec.get("owner")
        _expect(isinstance(owner, str) and owner, f"{where}: 'owner' must be a user name")
        admins_allowed = spec.get("admins_allowed", False)
        _expect(isinstance(admins_allowed, bool), f"{where}: 'admins_allowed' must be true or false")
        key_hashes = spec.get("key_hashes", [])
        _expect(isinstance(key_hashes, list) and all(isinstance(k, str) for k in key_hashes),
                f"{where}: 'key_hashes' must be a list of sha256 hex strings")
        raw_revisions = spec.get("revisions", [])
        _expect(isinstance(raw_revisions, list), f"{where}: 'revisions' must be a list")
        revisions = []
        for raw_revision in raw_revisions:
            _expect(isinstance(raw_revision, dict), f"{where}: each revision must be an object")
            rev_name = raw_revision.get("name")
            _expect(isinstance(rev_name, str) and rev_name, f"{where}: a revision has no name")
            traffic = raw_revision.get("traffic_percent", 0)
            _expect(isinstance(traffic, (int, float)) and not isinstance(traffic, bool)
                    and 0 <= traffic <= 100,
                    f"{where}, revision {rev_name!r}: 'traffic_percent' must be 0..100")
            raw_replicas = raw_revision.get("replicas", [])
            _expect(isinstance(raw_replicas, list),
                    f"{where}, revision {rev_name!r}: 'replicas' must be a list")
            members = []
            for raw_replica in raw_replicas:
                _expect(isinstance(raw_replica, dict), f"{where}: each replica must be an object")
                rid, url, state = raw_replica.get("id"), raw_replica.get("url"), raw_replica.get("state")
                _expect(isinstance(rid, str) and rid, f"{where}: a replica has no id")
                _expect(isinstance(url, str), f"replica {rid!r}: 'url' must be a string")
                _expect(isinstance(state, str), f"replica {rid!r}: 'state' must be a string")
                _expect(rid not in replicas, f"replica {rid!r} is listed twice")
                replica = previous.replicas.get(rid)
                if replica is None or replica.url != url:
                    replica = Replica(rid, url, master)
                replicas[rid] = replica
                members.append((replica, state))
            revisions.append((rev_name, traffic, members))
        plan.append((name, owner, admins_allowed, frozenset(k.lower() for k in key_hashes), revisions))

    deployments: dict[str, Deployment] = {}
    for name, owner, admins_allowed, key_hashes, revisions in plan:
        built = []
        for rev_name, traffic, members in revisions:
            for replica, state in members:
                replica.state = state
            built.append(Revision(rev_name, traffic, [replica for replica, _ in members]))
        old = previous.deployments.get(name)
        stats = old.stats if old is not None else DeploymentStats()
        stats.revision_requests = {r.name: stats.revision_requests.get(r.name, 0) for r in built}
        deployments[name] = Deployment(name, owner, admins_allowed, key_hashes, built, stats)
    return RouteTable(generation, deployments, replicas)


# -- balancing -------------------------------------------------------------------------------------


class Balancer:
    """Weighted-random choice of a revision, then the ready replica with the fewest requests in
    flight (ties in turn). ``rng`` and ``clock`` are seams for tests."""

    def __init__(self, rng: random.Random | None = None, clock=time.monotonic):
        self.rng = rng or random.Random()
        self.clock = clock

    def pick(self, deployment: Deployment, tried: list[Replica],
             prefer: Revision | None = None) -> tuple[Replica | None, Revision | None]:
        if prefer is not None:
            replica = self._least(prefer, tried)
            if replica is not None:
                return replica, prefer
        revisions = deployment.routable
        if len(revisions) == 1 and prefer is None:
            revision = revisions[0]
            return self._least(revision, tried), revision
        open_revisions = [r for r in revisions
                          if r is not prefer and any(x not in tried for x in r.ready)]
        if not open_revisions:
            return None, None
        x = self.rng.random() * sum(r.traffic for r in open_revisions)
        revision = open_revisions[-1]
        for candidate in open_revisions:
            x -= candidate.traffic
            if x < 0:
                revision = candidate
                break
        return self._least(revision, tried), revision

    def _least(self, revision: Revision, tried: list[Replica]) -> Replica | None:
        now = self.clock()
        best_key = None
        ties: list[Replica] = []
        for replica in revision.ready:
            if tried and replica in tried:
                continue
            key = (replica.down_until > now, replica.in_flight)
            if best_key is None or key < best_key:
                best_key, ties = key, [replica]
            elif key == best_key:
                ties.append(replica)
        if not ties:
            return None
        if len(ties) == 1:
            return ties[0]
        revision.rr += 1
        return ties[revision.rr % len(ties)]


# -- authentication against the hub ---------------------------------------------------------------


class HubAuth:
    """Who a JupyterHub token belongs to: ``GET {hub_api_url}/user``, cached for a minute (a
    refused token for a few seconds). Concurrent look-ups of one token share one hub call."""

    def __init__(self, api_url: str, clock=time.monotonic):
        self.api_url = api_url.rstrip("/")
        self.clock = clock
        self._cache: OrderedDict[str, tuple[float, dict | None]] = OrderedDict()
        self._pending: dict[str, asyncio.Future] = {}
        self._session = None

    async def user(self, token: str) -> dict | None:
        """The hub's user model, or None for a token the hub refuses (HubUnavailable when the hub
        does not answer)."""
        if not self.api_url:
            return None
        key = hashlib.sha256(token.encode()).hexdigest()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > self.clock():
            return hit[1]
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._lookup(key, token))
            self._pending[key] = pending
            pending.add_done_callback(lambda f: self._done(key, f))
        # shielded: a caller that hangs up does not cancel the look-up others wait for
        return await asyncio.shield(pending)

    def _done(self, key: str, future: asyncio.Future) -> None:
        self._pending.pop(key, None)
        if not future.cancelled():
            future.exception()  # retrieved here, so an error nobody waits for is not logged

    async def _lookup(self, key: str, token: str) -> dict | None:
        model = await self._ask(token)
        ttl = HUB_CACHE_SECONDS if model is not None else HUB_NEGATIVE_CACHE_SECONDS
        self._cache[key] = (self.clock() + ttl, model)
        self._cache.move_to_end(key)
        while len(self._cache) > HUB_CACHE_SIZE:
            self._cache.popitem(last=False)
        return model

    async def _ask(self, token: str) -> dict | None:
        import aiohttp  # only routers that see hub tokens pay for the import

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HUB_TIMEOUT))
        try:
            async with self._session.get(f"{self.api_url}/user",
                                         headers={"Authorization": f"token {token}"}) as response:
                if response.status in (401, 403):
                    return None
                if response.status != 200:
                    raise HubUnavailable(f"the hub answered {response.status}")
                model = await response.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            raise HubUnavailable(str(e) or type(e).__name__) from e
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            raise HubUnavailable("the hub's /user answer has no name")
        return model

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


# -- HTTP/1.1 plumbing ----------------------------------------------------------------------------


class Request:
    __slots__ = ("method", "target", "version", "headers", "content_length", "chunked",
                 "keep_alive", "expect_continue", "authorization", "api_key")

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


def parse_request_head(head: bytes) -> Request:
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadRequest("malformed request line")
    req = Request()
    req.method, req.target, req.version = parts
    if req.version != b"HTTP/1.1" and req.version != b"HTTP/1.0":
        raise BadRequest("only HTTP/1.0 and HTTP/1.1 are spoken here", 505)
    headers = []
    content_length = None
    transfer_encoding = None
    connection = b""
    authorization = api_key = None
    expect = None
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name[-1] in b" \t" or name[0] in b" \t":
            raise BadRequest("malformed header line")
        lname = name.lower()
        value = value.strip()
        headers.append((lname, line))
        if lname == b"content-length":
            if not value.isdigit() or (content_length is not None and int(value) != content_length):
                raise BadRequest("bad Content-Length")
            content_length = int(value)
        elif lname == b"transfer-encoding":
            transfer_encoding = value.lower()
        elif lname == b"connection":
            connection = value.lower()
        elif lname == b"authorization":
            authorization = value
        elif lname == b"x-api-key":
            api_key = value
        elif lname == b"expect":
            expect = value.lower()
    if transfer_encoding is not None:
        if content_length is not None:
            raise BadRequest("both Content-Length and Transfer-Encoding")
        if transfer_encoding != b"chunked":
            raise BadRequest("only the chunked transfer coding is supported", 501)
    req.headers = headers
    req.content_length = content_length
    req.chunked = transfer_encoding is not None
    if req.version == b"HTTP/1.1":
        req.keep_alive = b"close" not in connection
    else:
        req.keep_alive = False
    if connection and connection not in (b"close", b"keep-alive"):
        # headers named in Connection concern this hop only
        named = {t.strip() for t in connection.split(b",")}
        req.headers = [h for h in headers if h[0] not in named]
    req.expect_continue = expect == b"100-continue"
    req.authorization = authorization
    req.api_key = api_key
    return req


def simple_response(status: int, body: dict | bytes, *, keep_alive: bool = True,
                    extra: bytes = b"", head_only: bool = False) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    out = (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s%s\r\n"
           % (status, REASONS.get(status, b"Error"), len(data), extra,
              b"" if keep_alive else b"Connection: close\r\n"))
    return out if head_only else out + data


async def copy_exact(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    while n > 0:
        data = await reader.read(min(n, COPY_SIZE))
        if not data:
            raise asyncio.IncompleteReadError(b"", n)
        n -= len(data)
        writer.write(data)
        if writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            await writer.drain()


async def copy_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       dechunk: bool = False) -> None:
    """Relay a chunked body chunk by chunk, each written as soon as it arrives (server-sent
    events and token streams reach the caller unbuffered); ``dechunk`` strips the framing."""
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadResponse("bad chunk size") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers are dropped
                pass
            if not dechunk:
                writer.write(b"0\r\n\r\n")
            return
        if size <= COPY_SIZE:
            data = await reader.readexactly(size + 2)
            writer.write(data[:-2] if dechunk else line + data)
        else:
            if not dechunk:
                writer.write(line)
            await copy_exact(reader, writer, size)
            crlf = await reader.readexactly(2)
            if not dechunk:
                writer.write(crlf)
        if writer.transport.is_closing():
            raise ConnectionResetError("the other side went away")
        if writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            await writer.drain()


async def copy_until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        data = await reader.read(COPY_SIZE)
        if not data:
            return
        writer.write(data)
        if writer.transport.is_closing():
            raise ConnectionResetError("the other side went away")
        if writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            await writer.drain()


class Connection:
    __slots__ = ("reader", "writer", "task", "busy", "since")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.task = asyncio.current_task()
        self.busy = False
        self.since = time.monotonic()


# -- the router ------------------------------------------------------------------------------------


class Router:
    def __init__(self, routes_path: str, admin_token: str, hub_api_url: str = "",
                 balancer: Balancer | None = None):
        self.routes_path = routes_path
        self.admin_token = admin_token.encode()
        self.master = admin_token
        self.hub = HubAuth(hub_api_url)
        self.balancer = balancer or Balancer()
        self.table = RouteTable()
        self.started = time.time()
        self.closing = False
        self.connections: set[Connection] = set()
        self._routes_stat = None

    # -- the routes file -----------------------------------------------------------------------

    def load_routes(self) -> bool:
        """Apply the routes file if it changed; keep the last good table when it is bad."""
        try:
            st = os.stat(self.routes_path)
        except OSError as e:
            if self._routes_stat != "missing":
                log.warning("Cannot read the routes file %s (%s); keeping the current table",
                            self.routes_path, e.strerror)
                self._routes_stat = "missing"
            return False
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key == self._routes_stat:
            return False
        self._routes_stat = key
        try:
            with open(self.routes_path, "rb") as f:
                doc = json.loads(f.read())
            table = parse_routes(doc, self.table, self.master)
        except (OSError, ValueError) as e:
            log.error("Ignoring the routes file %s: %s; keeping generation %d",
                      self.routes_path, e, self.table.generation)
            return False
        for rid, replica in self.table.replicas.items():
            if table.replicas.get(rid) is not replica:
                replica.retired = True
                replica.close_idle()
        self.table = table
        log.info("Routes generation %d: %d deployment(s), %d replica(s)", table.generation,
                 len(table.deployments), len(table.replicas))
        return True

    async def watch_routes(self) -> None:
        while True:
            try:
                self.load_routes()
            except Exception:  # the router must outlive any routes file
                log.exception("Unexpected error while loading the routes")
            await asyncio.sleep(ROUTES_POLL_SECONDS)

    async def sweep(self) -> None:
        """Close idle keep-alive connections: callers' after a while, replicas' before the replica
        would close them itself. A request whose caller has hung up is abandoned, so a replica
        that never answers does not pile up connections (callers do not half-close in HTTP/1.1)."""
        while True:
            await asyncio.sleep(1.0)
            cutoff = time.monotonic() - CLIENT_IDLE_TIMEOUT
            for conn in list(self.connections):
                if not conn.busy:
                    if conn.since < cutoff:
                        conn.writer.close()
                elif conn.reader.at_eof() or conn.writer.is_closing():
                    if conn.task is not None and not conn.task.done():
                        conn.task.cancel()
            for replica in self.table.replicas.values():
                if replica.idle:
                    replica.close_idle(UPSTREAM_IDLE_TIMEOUT)

    # -- connections ---------------------------------------------------------------------------

    async def serve_public(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve(reader, writer, self.handle_public)

    async def serve_admin(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve(reader, writer, self.handle_admin)

    async def _serve(self, reader, writer, handler) -> None:
        conn = Connection(reader, writer)
        self.connections.add(conn)
        try:
            while not self.closing:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    writer.write(simple_response(431, {"error": "request head too large"}, keep_alive=False))
                    break
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                conn.busy = True
                try:
                    request = parse_request_head(head)
                except BadRequest as e:
                    writer.write(simple_response(e.status, {"error": str(e)}, keep_alive=False))
                    break
                if not await handler(request, reader, writer):
                    break
                conn.busy = False
                conn.since = time.monotonic()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # the caller hung up (see sweep) or the router is stopping
        except Exception:
            log.exception("Unexpected error while serving a connection")
        finally:
            self.connections.discard(conn)
            writer.close()

    def _respond(self, writer, request: Request, status: int, body: dict, extra: bytes = b"") -> bool:
        """Answer from the router itself; the connection stays open only when no unread body is
        left behind."""
        keep = request.keep_alive and not request.has_body and not self.closing
        writer.write(simple_response(status, body, keep_alive=keep, extra=extra,
                                     head_only=request.method == b"HEAD"))
        return keep

    # -- the admin API -------------------------------------------------------------------------

    async def handle_admin(self, request: Request, reader, writer) -> bool:
        scheme, _, token = (request.authorization or b"").partition(b" ")
        if scheme.lower() != b"token" or not hmac.compare_digest(token.strip(), self.admin_token):
            return self._respond(writer, request, 401,
                                 {"error": "the admin API needs 'Authorization: token <admin token>'"})
        path = request.target.split(b"?", 1)[0]
        if request.method not in (b"GET", b"HEAD"):
            return self._respond(writer, request, 405, {"error": "only GET is allowed here"})
        if path == b"/healthz":
            return self._respond(writer, request, 200, {"ok": True, "generation": self.table.generation,
                                                        "replica_keys": True})
        if path == b"/stats":
            return self._respond(writer, request, 200, self.stats())
        return self._respond(writer, request, 404,
                             {"error": "no such admin resource; try /stats or /healthz"})

    def stats(self) -> dict:
        now = time.monotonic()
        out = {}
        for name, d in self.table.deployments.items():
            s = d.stats
            out[name] = {
                "in_flight": s.in_flight, "requests": s.requests, "errors": s.errors,
                "latency_ms": s.latency.percentiles(now),
                "replicas": {r.id: {"in_flight": r.in_flight, "requests": r.requests,
                                    "errors": r.errors, "state": r.state}
                             for rev in d.revisions for r in rev.replicas},
                "revisions": {rev.name: {"requests": s.revision_requests.get(rev.name, 0),
                                         "traffic_percent": rev.traffic}
                              for rev in d.revisions},
            }
        return {"generation": self.table.generation, "uptime_s": round(time.time() - self.started, 1),
                "deployments": out}

    # -- the public side -----------------------------------------------------------------------

    async def handle_public(self, request: Request, reader, writer) -> bool:
        target = request.target
        if target[:1] != b"/":
            return self._respond(writer, request, 400, {"error": "the request target must be a path"})
        end = target.find(b"/", 1)
        if end < 0:
            end = target.find(b"?", 1)
            if end < 0:
                end = len(target)
        name = target[1:end].decode("latin-1")
        deployment = self.table.deployments.get(name)
        if deployment is None:
            return self._respond(writer, request, 404, {"error": f"no deployment named {name!r} here"})
        upstream_target = target[end:]
        if upstream_target[:1] != b"/":
            upstream_target = b"/" + upstream_target
        if upstream_target.startswith(b"/v2/health/") and request.method in (b"GET", b"HEAD"):
            which = upstream_target.split(b"?", 1)[0]
            if which == b"/v2/health/live":
                return self._respond(writer, request, 200, {"live": True})
            if which == b"/v2/health/ready":
                if deployment.ready:
                    return self._respond(writer, request, 200, {"ready": True})
                return self._respond(writer, request, 503,
                                     {"ready": False, "error": f"no replica of {name!r} is ready"})
        denied = await self.authenticate(request, deployment)
        if denied is not None:
            status, message = denied
            extra = b'WWW-Authenticate: Bearer realm="fermi"\r\n' if status == 401 else b""
            return self._respond(writer, request, status, {"error": message}, extra)
        return await self.proxy(request, reader, writer, deployment, upstream_target)

    async def authenticate(self, request: Request, deployment: Deployment) -> tuple[int, str] | None:
        """None when the caller may use the deployment, else (status, message)."""
        key = None
        if request.authorization is not None:
            scheme, _, credential = request.authorization.partition(b" ")
            scheme = scheme.lower()
            credential = credential.strip()
            if scheme == b"bearer":
                key = credential
            elif scheme == b"token":
                return await self._hub_check(credential.decode("latin-1"), deployment)
            else:
                return 401, ("unsupported Authorization scheme; send 'Bearer <API key>' or "
                             "'token <hub token>'")
        elif request.api_key is not None:
            key = request.api_key
        if not key:
            return 401, (f"deployment {deployment.name!r} needs an API key ('Authorization: Bearer <key>' "
                         "or 'X-API-Key: <key>') or the owner's JupyterHub token")
        if hashlib.sha256(key).hexdigest() in deployment.key_hashes:
            return None
        return 401, f"this API key is not valid for deployment {deployment.name!r}"

    async def _hub_check(self, token: str, deployment: Deployment) -> tuple[int, str] | None:
        if not token:
            return 401, "empty token"
        if not self.hub.api_url:
            return 401, ("JupyterHub tokens are not accepted by this router (no hub API configured); "
                         "use an API key")
        try:
            user = await self.hub.user(token)
        except HubUnavailable as e:
            log.warning("The hub did not answer a token check: %s", e)
            return 503, "the hub cannot check this token right now; retry, or use an API key"
        if user is None:
            return 401, "the hub does not know this token"
        if user.get("name") == deployment.owner or (deployment.admins_allowed and user.get("admin") is True):
            return None
        return 403, f"user {user.get('name')!r} may not use deployment {deployment.name!r}"

    async def proxy(self, request: Request, reader, writer, deployment: Deployment,
                    upstream_target: bytes) -> bool:
        stats = deployment.stats
        stats.requests += 1
        stats.in_flight += 1
        started = time.monotonic()
        status = 499  # unless an answer is sent: the caller went away
        try:
            status, keep = await self._proxy(request, reader, writer, deployment, upstream_target)
            return keep and not self.closing
        finally:
            stats.in_flight -= 1
            if status >= 500:
                stats.errors += 1
            now = time.monotonic()
            stats.latency.add(now, now - started)

    async def _proxy(self, request, reader, writer, deployment, upstream_target) -> tuple[int, bool]:
        stats = deployment.stats
        if request.expect_continue and request.has_body:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = b""
        if request.content_length and request.content_length <= SMALL_BODY:
            body = await reader.readexactly(request.content_length)
            body_left = False
        else:
            body_left = request.has_body
        head = [request.method, b" ", upstream_target, b" HTTP/1.1\r\nHost: ", b"", b"\r\n"]
        for lname, line in request.headers:
            if lname not in REQUEST_DROP:
                head.append(line)
                head.append(b"\r\n")
        if request.chunked:
            head.append(b"Transfer-Encoding: chunked\r\n")
        elif request.content_length is not None:
            head.append(b"Content-Length: %d\r\n" % request.content_length)
        head.append(b"\r\n")

        tried: list[Replica] = []
        revision = None
        while len(tried) < MAX_TRIES:
            replica, revision = self.balancer.pick(deployment, tried, revision)
            if replica is None:
                break
            tried.append(replica)
            replica.in_flight += 1
            try:
                try:
                    up_reader, up_writer = await replica.connect()
                except (OSError, asyncio.TimeoutError) as e:
                    # nothing reached the replica: try another one
                    replica.errors += 1
                    stats.errors += 1
                    if replica.down_until < time.monotonic():
                        log.warning("Replica %s (%s) refused a connection: %s", replica.id,
                                    replica.url, e or type(e).__name__)
                    replica.down_until = time.monotonic() + EJECT_SECONDS
                    continue
                replica.requests += 1
                stats.revision_requests[revision.name] = stats.revision_requests.get(revision.name, 0) + 1
                return await self._exchange(request, reader, writer, replica, up_reader, up_writer,
                                            head, body, body_left)
            finally:
                replica.in_flight -= 1
        message = f"no replica is ready for deployment {deployment.name!r}; retry shortly"
        if tried:
            message = (f"no replica is ready for deployment {deployment.name!r}: "
                       f"{', '.join(r.id for r in tried)} could not be reached; retry shortly")
        keep = request.keep_alive and not body_left
        writer.write(simple_response(503, {"error": message}, keep_alive=keep))
        return 503, keep

    async def _exchange(self, request, reader, writer, replica: Replica, up_reader, up_writer,
                        head: list, body: bytes, body_left: bool) -> tuple[int, bool]:
        """Send the request to the replica and stream its answer back: (status, keep-alive)."""
        sent_head = False
        reusable = False
        try:
            try:
                head[4] = replica.host_header
                up_writer.write(b"".join(head) + body if body else b"".join(head))
                if body_left:
                    if request.chunked:
                        await copy_chunked(reader, up_writer)
                    else:
                        await copy_exact(reader, up_writer, request.content_length)
                while True:
                    response_head = await up_reader.readuntil(b"\r\n\r\n")
                    if response_head[:7] != b"HTTP/1." or len(response_head) < 16:
                        raise BadResponse("not an HTTP/1.x response")
                    status = int(response_head[9:12])
                    if status == 101:
                        raise BadResponse("protocol upgrades are not supported")
                    if status >= 200:
                        break  # 1xx interim answers are dropped
            except (asyncio.IncompleteReadError, ConnectionError, BadResponse, ValueError,
                    asyncio.LimitOverrunError) as e:
                if body_left and not isinstance(e, (BadResponse, ValueError)) and reader.at_eof():
                    return 499, False  # the caller went away while sending its body
                replica.errors += 1
                log.warning("Replica %s failed a request: %s", replica.id, e or type(e).__name__)
                keep = request.keep_alive and not body_left
                writer.write(simple_response(
                    502, {"error": f"replica {replica.id} failed to answer; the request was not retried"},
                    keep_alive=keep))
                return 502, keep
            if status >= 500:
                replica.errors += 1

            lines = response_head[:-4].split(b"\r\n")
            out = [b"HTTP/1.1 " + lines[0][9:], b"\r\n"]
            content_length = None
            chunked = False
            upstream_close = lines[0][:8] == b"HTTP/1.0"
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                lname = name.strip().lower()
                if lname == b"content-length":
                    try:
                        content_length = int(value)
                    except ValueError:
                        raise BadResponse("bad Content-Length") from None
                elif lname in RESPONSE_DROP:
                    if lname == b"transfer-encoding":
                        chunked = b"chunked" in value.lower()
                    elif lname == b"connection":
                        token = value.strip().lower()
                        upstream_close = b"close" in token or (upstream_close and b"keep-alive" not in token)
                else:
                    out.append(line)
                    out.append(b"\r\n")
            no_body = request.method == b"HEAD" or status in (204, 304) or status < 200
            keep = request.keep_alive and not self.closing
            dechunk = False
            if chunked:
                content_length = None
            if content_length is not None:
                out.append(b"Content-Length: %d\r\n" % content_length)
            if no_body:
                pass
            elif chunked:
                if request.version == b"HTTP/1.1":
                    out.append(b"Transfer-Encoding: chunked\r\n")
                else:
                    dechunk, keep = True, False
            elif content_length is None:
                keep = False  # the body ends when the replica closes
            if not keep:
                out.append(b"Connection: close\r\n")
            out.append(b"\r\n")

            if no_body:
                sent_head = True
                writer.write(b"".join(out))
            elif content_length is not None and content_length <= SMALL_BODY:
                data = await up_reader.readexactly(content_length)
                sent_head = True
                writer.write(b"".join(out) + data)
            else:
                sent_head = True
                writer.write(b"".join(out))
                if content_length is not None:
                    await copy_exact(up_reader, writer, content_length)
                elif chunked:
                    await copy_chunked(up_reader, writer, dechunk)
                else:
                    await copy_until_eof(up_reader, writer)
                    upstream_close = True
            reusable = not upstream_close
            return status, keep
        except (asyncio.IncompleteReadError, ConnectionError, BadResponse, asyncio.LimitOverrunError) as e:
            if writer.transport.is_closing():
                return 499, False  # the caller went away
            replica.errors += 1
            log.warning("Replica %s: an answer broke off: %s", replica.id, e or type(e).__name__)
            if not sent_head:
                writer.write(simple_response(
                    502, {"error": f"replica {replica.id} sent a broken answer"}, keep_alive=False))
            # after the head, the caller's connection cannot carry on either
            return 502, False
        finally:
            if reusable:
                replica.release(up_reader, up_writer)
            else:
                up_writer.close()

    # -- running -------------------------------------------------------------------------------

    async def run(self, host: str, port: int, admin_port: int) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self.load_routes()
        public = await asyncio.start_server(self.serve_public, host, port, limit=HEAD_LIMIT,
                                            reuse_address=True, backlog=1024)
        admin = await asyncio.start_server(self.serve_admin, "127.0.0.1", admin_port,
                                           limit=HEAD_LIMIT, reuse_address=True)
        tasks = [asyncio.ensure_future(self.watch_routes()), asyncio.ensure_future(self.sweep())]
        log.info("Router listening on %s:%d (admin on 127.0.0.1:%d), routes from %s",
                 host, port, admin_port, self.routes_path)
        await stop.wait()

        log.info("Stopping: no new connections; waiting up to %.0f s for requests in flight", SHUTDOWN_GRACE)
        self.closing = True
        public.close()
        for conn in list(self.connections):
            if not conn.busy:
                conn.writer.close()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while any(c.busy for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        left = sum(1 for c in self.connections if c.busy)
        if left:
            log.warning("%d request(s) still in flight after %.0f s; closing them", left, SHUTDOWN_GRACE)
        admin.close()
        for task in tasks:
            task.cancel()
        for conn in list(self.connections):
            conn.writer.close()
        for replica in self.table.replicas.values():
            replica.close_idle()
        await self.hub.close()
        await asyncio.sleep(0)
        log.info("Router stopped")
        return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fermi_extension.serving.router",
                                     description="Fermi's router in front of the inference services.")
    parser.add_argument("--port", type=int, required=True, help="public port")
    parser.add_argument("--host", default="127.0.0.1", help="public address (default 127.0.0.1)")
    parser.add_argument("--routes", required=True, help="routes JSON file written by the control plane")
    parser.add_argument("--admin-port", type=int, required=True, help="admin API port on 127.0.0.1")
    parser.add_argument("--admin-token-file", required=True, help="file holding the admin API token")
    parser.add_argument("--hub-api-url", default="",
                        help="JupyterHub API URL for token checks (default: $JUPYTERHUB_API_URL)")
    return parser.parse_args(argv)


def raise_open_files_limit(wanted: int = 65536) -> None:
    """Each proxied request holds two sockets; the usual soft limit of 1024 is too low."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):
        pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_open_files_limit()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="[%(levelname).1s %(asctime)s router] %(message)s")
    try:
        with open(args.admin_token_file) as f:
            admin_token = f.read().strip()
    except OSError as e:
        log.error("Cannot read the admin token file %s: %s", args.admin_token_file, e.strerror)
        return 2
    if not admin_token:
        log.error("The admin token file %s is empty", args.admin_token_file)
        return 2
    hub_api_url = args.hub_api_url or os.environ.get("JUPYTERHUB_API_URL", "")
    router = Router(args.routes, admin_token, hub_api_url)
    try:
        import uvloop  # optional: faster when installed
    except ImportError:
        uvloop = None
    runner = uvloop.run if uvloop is not None else asyncio.run
    try:
        return runner(router.run(args.host, args.port, args.admin_port))
    except OSError as e:
        log.error("Cannot listen: %s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
