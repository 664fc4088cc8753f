"""Who is calling the tracking server, as the control plane's proxy tells it.

The proxy (``control_plane/tracking_proxy.py``) authenticates a request and forwards it with
two headers: the caller (``X-Fermi-Caller``) and an HMAC-SHA256 of it, the method, the path and
the time (``X-Fermi-Caller-Signature``), keyed by a secret only the control plane and the
tracking server hold in their environment ($FERMI_TRACKING_SECRET, set by hub_config).

Why signed headers rather than a second listener only the proxy uses: both processes are
started by the hub with an environment no workload gets (``workload_env`` is an allow-list,
containers get none of it), so the secret is as private as a port would be, and it needs
nothing more than one environment variable: no second port to choose, bind and keep off the
workloads' network, and a header that reached the server any other way (forged, or copied to
another path or minute) is refused rather than trusted for where it came in. A request with
neither header is the control plane's own (``tracking.tracker.Tracker``, on the direct port that
only the platform's processes reach) and is served as before.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from dataclasses import asdict, dataclass

from ..caller import Caller
from ..workload_tokens import Grant

SECRET_ENV = "FERMI_TRACKING_SECRET"
CALLER_HEADER = "x-fermi-caller"
SIGNATURE_HEADER = "x-fermi-caller-signature"
# a signature is good this long: enough for a slow upload to start, too short to be worth
# replaying (and it covers one method and path only)
MAX_AGE_SECONDS = 300


@dataclass(frozen=True)
class TrackingCaller:
    """A user (``grant`` None) or a workload acting for ``caller.name`` within ``grant``."""

    caller: Caller
    grant: Grant | None = None

    @property
    def name(self) -> str:
        return self.caller.name

    @property
    def admin(self) -> bool:
        return self.caller.admin and self.grant is None  # a workload is never an admin

    def describe(self) -> str:
        if self.grant is not None and self.grant.kind == "replica":
            return (f"the token of deployment {self.grant.deployment}'s model server "
                    f"({self.grant.model})")
        if self.grant is not None:
            return f"the token of job {self.grant.job_id} (run {self.grant.run_id})"
        return f"user {self.caller.name}"


class BadSignature(Exception):
    pass


def secret_from_env() -> bytes:
    return os.environ.get(SECRET_ENV, "").encode()


def _mac(secret: bytes, method: str, path: str, stamp: str, payload: str) -> str:
    message = "\n".join((method.upper(), path, stamp, payload)).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign(secret: bytes, method: str, path: str, who: TrackingCaller,
         now: float | None = None) -> dict[str, str]:
    """The headers that tell the tracking server who sends ``method path``."""
    grant = who.grant
    payload = base64.urlsafe_b64encode(json.dumps({
        "name": who.caller.name, "admin": who.caller.admin, "groups": list(who.caller.groups),
        "grant": None if grant is None else asdict(grant),
    }, separators=(",", ":")).encode()).decode()
    stamp = str(int(now if now is not None else time.time()))
    return {CALLER_HEADER: payload,
            SIGNATURE_HEADER: f"{stamp}.{_mac(secret, method, path, stamp, payload)}"}


def verify(secret: bytes, method: str, path: str, payload: str, signature: str,
           now: float | None = None) -> TrackingCaller:
    """The caller the headers name; ``BadSignature`` unless the proxy signed them for this
    request within ``MAX_AGE_SECONDS``."""
    if not secret:
        raise BadSignature(f"the tracking server has no {SECRET_ENV}: it cannot check callers")
    stamp, _, mac = signature.partition(".")
    if not stamp.isdigit() or not hmac.compare_digest(mac, _mac(secret, method, path, stamp,
                                                                 payload)):
        raise BadSignature("the caller headers are not signed by the platform's proxy")
    if abs((now if now is not None else time.time()) - int(stamp)) > MAX_AGE_SECONDS:
        raise BadSignature("the caller headers' signature has expired")
    data = json.loads(base64.urlsafe_b64decode(payload.encode()))
    grant = data.get("grant")
    return TrackingCaller(
        Caller(name=data["name"], admin=bool(data.get("admin")),
               groups=tuple(data.get("groups") or ())),
        Grant(**grant) if grant else None)
