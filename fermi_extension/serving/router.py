"""The router of the inference services on one machine.

One process serves every deployment's stable URL ``/{deployment}/...``, authenticates each
request and balances it over the deployment's model-server replicas. The control plane tells it
what exists through a routes file that it rewrites atomically; the router polls the file (every
50 ms) and swaps its table in place, so nothing restarts and no request in flight is dropped. A
bad file is logged and the last good table kept. The control plane starts it so (keep stable)::

    python -m fermi_extension.serving.router --port PUBLIC_PORT --host HOST --routes ROUTES_JSON \\
        --admin-port ADMIN_PORT [--admin-host HOST] --admin-token-file FILE [--hub-api-url URL] \\
        [--head-timeout S] [--body-timeout S]

Routes file: ``{"generation": N, "deployments": {NAME: {"owner", "admins_allowed", "key_hashes":
[sha256 hex of API keys], "revisions": [{"name", "traffic_percent", "replicas": [{"id", "url",
"state": "ready" | "draining" | other}]}]}}}``; other fields are ignored. A replica's ``url`` is
``http://HOST:PORT`` (a local process: ``http://127.0.0.1:PORT``, a Kubernetes Service with the
port it declares) or ``http://HOST`` (port 80: a Service such as KServe's ``NAME-predictor``).

One way to hand the router its table, on both backends: a file. The embedded default writes it
(``backends/local/serving.py``); on Kubernetes the control plane writes the ConfigMap
``fermi-routes``, which the chart mounts at ``/etc/fermi/routes``, and the kubelet updates the
mounted file by swapping a symlink (``routes.json -> ..data/routes.json``, ``..data ->
..TIMESTAMP/``, the folder replaced whole). Polling ``os.stat`` of the path follows those links,
so either way the router sees a new file (a new inode) and nothing else is needed: no admin
write API to secure, no push that can be lost while the router restarts (a restarted router
reads the current file).

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
Malformed requests get 400/408/413/431 from the HTTP layer (``serving.http``) and never reach a
replica.

Admin side, on ``--admin-host`` (127.0.0.1 unless told: the chart passes 0.0.0.0 so that the
control plane reaches it at the router's Service), with ``Authorization: token <admin token>``
(read from ``--admin-token-file``, on Kubernetes the Secret ``fermi-router-token``): ``GET /healthz``
(``{"ok", "generation", "replica_keys": true, "readiness": true}``; the last two say this router
sends replica keys and reports readiness in ``/stats``) and ``GET /stats``: ``generation`` (of the
table it routes by now), ``readiness: true``, and per deployment ``ready`` (whether a request now would be routed to
a ready replica: the one source of truth the control plane reports readiness from),
``in_flight``, ``requests`` (authenticated requests since start), ``errors`` (5xx answers +
failed connection attempts), ``latency_ms`` (``p50``/``p99``/``count`` over the last 60 s, 0.0
when none), and per replica (with its ``state`` as routed) and per revision their counters.

Both sides speak HTTP through ``serving.http`` (llhttp via httptools, on asyncio protocols with
no task per request): on a 2-core machine the router shares the cores with the replicas, so its
cost per request matters (aiohttp's server and client together cost several times more CPU per
request, ~3,500 vs ~16,000 proxied requests/s measured side by side).
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

from fermi_extension.serving.http import (HttpServer, Limits, Stream, Upstream, UpstreamError,
                                          add_timeout_arguments)
from fermi_extension.serving.replica_key import replica_key

log = logging.getLogger("fermi.router")

CONNECT_TIMEOUT = 5.0
MAX_TRIES = 3  # connection attempts per request; only attempts that never reached a replica are retried
EJECT_SECONDS = 2.0  # a replica that refused a connection is tried last for this long
UPSTREAM_IDLE_TIMEOUT = 4.0  # below the replicas' keep-alive, so a pooled connection is never stale
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
# Response headers of the replica's hop; the HTTP layer frames the answer to the caller anew.
RESPONSE_DROP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"content-length",
})
JSON = ((b"Content-Type", b"application/json"),)
WWW_AUTHENTICATE = (b"WWW-Authenticate", b'Bearer realm="fermi"')


class RoutesError(ValueError):
    """The routes file is not a valid table; the message says what is wrong."""


class HubUnavailable(Exception):
    pass


def answer(status: int, doc: dict, *extra) -> tuple:
    return status, (*JSON, *extra), json.dumps(doc).encode()


# -- the routing table -----------------------------------------------------------------------------


def replica_address(replica_id: str, url: str) -> tuple[str, int]:
    """(host, port) of a replica's url: ``http://HOST:PORT``, or ``http://HOST`` for port 80 (a
    Kubernetes Service's URL names no port when the Service declares 80)."""
    wrong = (f"replica {replica_id!r}: url must be http://HOST or http://HOST:PORT (no path, "
             f"query or credentials), not {url!r}")
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.username is not None \
            or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise RoutesError(wrong)
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        raise RoutesError(wrong) from None
    if port == 0:
        raise RoutesError(wrong)
    return parts.hostname, port or 80


class Replica:
    """One model-server process; kept across table reloads (by id and url) with its counters and
    its pool of idle keep-alive connections."""

    __slots__ = ("id", "url", "upstream", "host_header", "state", "in_flight", "requests",
                 "errors", "down_until")

    def __init__(self, replica_id: str, url: str, master: str = ""):
        host, port = replica_address(replica_id, url)
        self.id = replica_id
        self.url = url
        self.upstream = Upstream(host, port, max_idle=UPSTREAM_MAX_IDLE,
                                 idle_timeout=UPSTREAM_IDLE_TIMEOUT, connect_timeout=CONNECT_TIMEOUT)
        # spliced into every request head after "Host: ": with the replica's key in it, the key
        # costs nothing per request. The key is of the url exactly as the routes file spells it:
        # the control plane derived the replica's own key from that same string.
        self.host_header = urlsplit(url).netloc.encode("latin-1")
        if master:
            self.host_header += b"\r\nAuthorization: Bearer " + replica_key(master, url).encode()
        self.state = "ready"
        self.in_flight = 0
        self.requests = 0
        self.errors = 0
        self.down_until = 0.0

    def retire(self) -> None:
        self.upstream.retired = True
        self.upstream.close_idle()


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


# -- the router ------------------------------------------------------------------------------------


class Router:
    def __init__(self, routes_path: str, admin_token: str, hub_api_url: str = "",
                 balancer: Balancer | None = None, limits: Limits | None = None):
        self.routes_path = routes_path
        self.admin_token = admin_token.encode()
        self.master = admin_token
        self.hub = HubAuth(hub_api_url)
        self.balancer = balancer or Balancer()
        self.table = RouteTable()
        self.started = time.time()
        self.limits = limits or Limits()
        # the replicas' own answers carry their Date and Server; the router adds neither
        self.public = HttpServer(self.handle_public, self.limits, date=False, default_content_type=None)
        self.admin = HttpServer(self.handle_admin, self.limits, date=False)
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
        # os.stat follows the kubelet's symlinks to the file they point at now; its device and
        # inode change when the ConfigMap's folder is swapped, even if size and mtime do not
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
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
                replica.retire()
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
        """Close idle pooled connections before the replica would close them itself."""
        while True:
            await asyncio.sleep(1.0)
            for replica in self.table.replicas.values():
                if replica.upstream.idle:
                    replica.upstream.close_idle(UPSTREAM_IDLE_TIMEOUT)

    # -- the admin API -------------------------------------------------------------------------

    def handle_admin(self, request) -> tuple:
        scheme, _, token = (request.header(b"authorization") or b"").partition(b" ")
        if scheme.lower() != b"token" or not hmac.compare_digest(token.strip(), self.admin_token):
            return answer(401, {"error": "the admin API needs 'Authorization: token <admin token>'"})
        if request.method not in ("GET", "HEAD"):
            return answer(405, {"error": "only GET is allowed here"}, (b"Allow", b"GET, HEAD"))
        if request.path == "/healthz":
            return answer(200, {"ok": True, "generation": self.table.generation,
                                "replica_keys": True, "readiness": True})
        if request.path == "/stats":
            return answer(200, self.stats())
        return answer(404, {"error": "no such admin resource; try /stats or /healthz"})

    def stats(self) -> dict:
        now = time.monotonic()
        out = {}
        for name, d in self.table.deployments.items():
            s = d.stats
            out[name] = {
                "ready": d.ready,
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
                "readiness": True, "deployments": out}

    # -- the public side -----------------------------------------------------------------------


    # -- the public side -----------------------------------------------------------------------

    def handle_public(self, request):
        target = request.target
        if target[:1] != b"/":  # absolute form: the HTTP layer has taken the path out
            target = (request.path + ("?" + request.query if request.query else "")).encode("latin-1")
        end = target.find(b"/", 1)
        if end < 0:
            end = target.find(b"?", 1)
            if end < 0:
                end = len(target)
        name = target[1:end].decode("latin-1")
        deployment = self.table.deployments.get(name)
        if deployment is None:
            return answer(404, {"error": f"no deployment named {name!r} here"})
        upstream_target = target[end:]
        if upstream_target[:1] != b"/":
            upstream_target = b"/" + upstream_target
        if upstream_target.startswith(b"/v2/health/") and request.method in ("GET", "HEAD"):
            which = upstream_target.split(b"?", 1)[0]
            if which == b"/v2/health/live":
                return answer(200, {"live": True})
            if which == b"/v2/health/ready":
                if deployment.ready:
                    return answer(200, {"ready": True})
                return answer(503, {"ready": False, "error": f"no replica of {name!r} is ready"})
        authorization = api_key = None
        for lname, value in request.headers:
            if lname == b"authorization":
                authorization = value
            elif lname == b"x-api-key":
                api_key = value
        key = None
        if authorization is not None:
            scheme, _, credential = authorization.partition(b" ")
            scheme = scheme.lower()
            credential = credential.strip()
            if scheme == b"bearer":
                key = credential
            elif scheme == b"token":
                return self._with_hub_token(request, deployment, upstream_target,
                                            credential.decode("latin-1"))
            else:
                return answer(401, {"error": "unsupported Authorization scheme; send 'Bearer <API key>' "
                                             "or 'token <hub token>'"}, WWW_AUTHENTICATE)
        elif api_key is not None:
            key = api_key
        if not key:
            return answer(401, {"error": f"deployment {deployment.name!r} needs an API key "
                                         "('Authorization: Bearer <key>' or 'X-API-Key: <key>') or "
                                         "the owner's JupyterHub token"}, WWW_AUTHENTICATE)
        if hashlib.sha256(key).hexdigest() not in deployment.key_hashes:
            return answer(401, {"error": f"this API key is not valid for deployment {deployment.name!r}"},
                          WWW_AUTHENTICATE)
        return self.proxy(request, deployment, upstream_target)

    async def _with_hub_token(self, request, deployment: Deployment, upstream_target: bytes, token: str):
        denied = await self._hub_check(token, deployment)
        if denied is not None:
            status, message = denied
            return answer(status, {"error": message}, *((WWW_AUTHENTICATE,) if status == 401 else ()))
        return await self.proxy(request, deployment, upstream_target)

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


    def proxy(self, request, deployment: Deployment, upstream_target: bytes) -> asyncio.Future:
        """Forward to a ready replica; the Future resolves to the answer for the caller."""
        stats = deployment.stats
        stats.requests += 1
        stats.in_flight += 1
        head = [request.method.encode("latin-1"), b" ", upstream_target, b" HTTP/1.1\r\nHost: ", b""]
        headers = request.headers
        connection = request.header(b"connection")
        named = ()
        if connection is not None and connection.lower() not in (b"close", b"keep-alive"):
            # headers named in Connection concern this hop only
            named = {t.strip() for t in connection.lower().split(b",")}
        for (lname, _), (name, value) in zip(headers, request.raw_headers):
            if lname not in REQUEST_DROP and lname not in named:
                head += (b"\r\n", name, b": ", value)
        body = request.body
        if body or request.content_length is not None or request.chunked:
            head.append(b"\r\nContent-Length: %d\r\n\r\n" % len(body))
        else:
            head.append(b"\r\n\r\n")
        exchange = Exchange(self, request, deployment, head, body)
        exchange.attempt()
        return exchange.result

    # -- running -------------------------------------------------------------------------------

    async def run(self, host: str, port: int, admin_port: int, admin_host: str = "127.0.0.1") -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self.load_routes()
        await self.public.listen(host, port)
        await self.admin.listen(admin_host, admin_port, backlog=128)
        tasks = [asyncio.ensure_future(self.watch_routes()), asyncio.ensure_future(self.sweep())]
        log.info("Router listening on %s:%d (admin on %s:%d), routes from %s",
                 host, port, admin_host, admin_port, self.routes_path)
        await stop.wait()

        log.info("Stopping: no new connections; waiting up to %.0f s for requests in flight", SHUTDOWN_GRACE)
        left = await self.public.drain(SHUTDOWN_GRACE)
        if left:
            log.warning("%d request(s) still in flight after %.0f s; closing them", left, SHUTDOWN_GRACE)
        for task in tasks:
            task.cancel()
        self.public.close()
        self.admin.close()
        for replica in self.table.replicas.values():
            replica.upstream.close_idle()
        await self.hub.close()
        await asyncio.sleep(0)
        log.info("Router stopped")
        return 0


class Exchange:
    """One request forwarded: picks a replica, retries only what never reached one, and hands
    the replica's answer (whole, or streamed) to the caller. Callbacks, not a task: the common
    path (a pooled connection, a short answer) costs no scheduling."""

    __slots__ = ("router", "request", "deployment", "head", "body", "tried", "revision",
                 "replica", "connection", "result", "started", "status", "settled")

    def __init__(self, router: Router, request, deployment: Deployment, head: list, body: bytes):
        self.router = router
        self.request = request
        self.deployment = deployment
        self.head = head
        self.body = body
        self.tried: list[Replica] = []
        self.revision: Revision | None = None
        self.replica: Replica | None = None
        self.connection = None
        self.result: asyncio.Future = asyncio.get_running_loop().create_future()
        self.result.add_done_callback(self._caller_gone)
        self.started = time.monotonic()
        self.status = 499  # unless an answer is sent: the caller went away
        self.settled = False

    def attempt(self) -> None:
        deployment = self.deployment
        while len(self.tried) < MAX_TRIES:
            replica, self.revision = self.router.balancer.pick(deployment, self.tried, self.revision)
            if replica is None:
                break
            self.tried.append(replica)
            connection = replica.upstream.pooled()
            replica.in_flight += 1
            self.replica = replica
            if connection is not None:
                self._send(connection)
            else:
                connecting = asyncio.ensure_future(replica.upstream.connect())
                connecting.add_done_callback(self._connected)
            return
        message = f"no replica is ready for deployment {deployment.name!r}; retry shortly"
        if self.tried:
            message = (f"no replica is ready for deployment {deployment.name!r}: "
                       f"{', '.join(r.id for r in self.tried)} could not be reached; retry shortly")
        self._answer(answer(503, {"error": message}), 503)

    def _connected(self, connecting: asyncio.Future) -> None:
        replica = self.replica
        if self.result.done():  # the caller went away meanwhile (and was settled then)
            if not connecting.cancelled() and connecting.exception() is None:
                replica.upstream.release(connecting.result())
            return
        error = None if connecting.cancelled() else connecting.exception()
        if connecting.cancelled() or error is not None:
            # nothing reached the replica: try another one
            replica.in_flight -= 1
            replica.errors += 1
            self.deployment.stats.errors += 1
            now = time.monotonic()
            if replica.down_until < now:
                log.warning("Replica %s (%s) refused a connection: %s", replica.id, replica.url,
                            error or type(error).__name__)
            replica.down_until = now + EJECT_SECONDS
            self.replica = None
            self.attempt()
            return
        self._send(connecting.result())

    def _send(self, connection) -> None:
        replica = self.replica
        replica.requests += 1
        revisions = self.deployment.stats.revision_requests
        revisions[self.revision.name] = revisions.get(self.revision.name, 0) + 1
        self.connection = connection
        head = self.head
        head[4] = replica.host_header
        data = b"".join(head)
        sent = connection.request(data + self.body if self.body else data,
                                  head_only=self.request.method == "HEAD")
        sent.add_done_callback(self._answered)

    def _answered(self, sent: asyncio.Future) -> None:
        if self.result.done():
            return
        replica = self.replica
        error = None if not sent.cancelled() else UpstreamError("cancelled")
        if error is None:
            error = sent.exception()
        if error is not None:
            replica.errors += 1
            log.warning("Replica %s failed a request: %s", replica.id, error or type(error).__name__)
            self._answer(answer(502, {"error": f"replica {replica.id} failed to answer; the request "
                                               "was not retried"}), 502)
            return
        response = sent.result()
        status = response.status
        if status >= 500:
            replica.errors += 1
        headers = [(name, value) for name, value in response.headers
                   if name.lower() not in RESPONSE_DROP]
        if response.source is None:
            self._answer((status, headers, response.body), status)
            return
        # streamed: the replica stays in flight until the last byte
        self.status = status
        source = response.source
        self.result.set_result(Stream(status, headers, source))
        source.when_finished(self._stream_ended)

    def _stream_ended(self, error: BaseException | None) -> None:
        if error is not None and not isinstance(error, asyncio.CancelledError):
            self.replica.errors += 1
            self.status = 502
            log.warning("Replica %s: an answer broke off: %s", self.replica.id, error or type(error).__name__)
        self._settle()

    def _answer(self, response: tuple, status: int) -> None:
        self.status = status
        self.result.set_result(response)
        self._settle()

    def _caller_gone(self, result: asyncio.Future) -> None:
        if result.cancelled():
            # the caller hung up before the answer: a replica that never answers does not pile
            # up connections
            if self.connection is not None:
                self.connection.abandon()
            self._settle()

    def _settle(self) -> None:
        if self.settled:
            return
        self.settled = True
        if self.replica is not None:
            self.replica.in_flight -= 1
        stats = self.deployment.stats
        stats.in_flight -= 1
        if self.status >= 500:
            stats.errors += 1
        now = time.monotonic()
        stats.latency.add(now, now - self.started)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fermi_extension.serving.router",
                                     description="Fermi's router in front of the inference services.")
    parser.add_argument("--port", type=int, required=True, help="public port")
    parser.add_argument("--host", default="127.0.0.1", help="public address (default 127.0.0.1)")
    parser.add_argument("--routes", required=True, help="routes JSON file written by the control plane")
    parser.add_argument("--admin-port", type=int, required=True, help="admin API port")
    parser.add_argument("--admin-host", default="127.0.0.1",
                        help="admin API address (default 127.0.0.1; in a pod 0.0.0.0, so that the "
                             "control plane reaches it through the router's Service: every "
                             "admin request needs the admin token)")
    parser.add_argument("--admin-token-file", required=True, help="file holding the admin API token")
    parser.add_argument("--hub-api-url", default="",
                        help="JupyterHub API URL for token checks (default: $JUPYTERHUB_API_URL)")
    add_timeout_arguments(parser)
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
    router = Router(args.routes, admin_token, hub_api_url,
                    limits=Limits(head_timeout=args.head_timeout, body_timeout=args.body_timeout))
    try:
        import uvloop  # optional: faster when installed
    except ImportError:
        uvloop = None
    runner = uvloop.run if uvloop is not None else asyncio.run
    try:
        return runner(router.run(args.host, args.port, args.admin_port, args.admin_host))
    except OSError as e:
        log.error("Cannot listen: %s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
