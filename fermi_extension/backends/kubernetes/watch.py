"""One list-and-watch per resource kind: a cache of Fermi's objects, kept current by a single
watch stream, that many waiters share.

A thousand running jobs cost one watch, not a thousand polls: ``wait_for(name, done)`` parks
on the cache and wakes when an event for that object arrives. A broken stream (dropped
connection, server error) is resumed from the last resourceVersion seen (an event's or a
BOOKMARK's); one that ends after its timeoutSeconds, at once; an expired one (410 Gone, as an
ERROR event or as the answer to the watch request) is listed again, and what changed meanwhile
is told to listeners and waiters as the watch would have told it (each change once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Callable

from .kube_client import KubeClient, KubeError

log = logging.getLogger("fermi.kubernetes")


def _version(obj: dict) -> str:
    return (obj.get("metadata") or {}).get("resourceVersion") or ""


def _matches(obj: dict, labels: dict[str, str]) -> bool:
    have = obj.get("metadata", {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


class Informer:
    """The objects of one kind in one namespace that carry ``labels``, by name."""

    def __init__(self, client: KubeClient, kind: str, namespace: str, labels: dict[str, str],
                 *, retry_seconds: float = 1.0, timeout_seconds: int = 300,
                 trim: Callable[[dict], dict] | None = None):
        self.client = client
        self.kind = kind
        self.namespace = namespace
        self.labels = labels
        self.selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        self.retry_seconds = retry_seconds
        self.timeout_seconds = timeout_seconds
        self.objects: dict[str, dict] = {}
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._synced = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._resource_version = ""
        # what of each object the cache keeps (memory stays bounded by what is read)
        self.trim = trim or (lambda obj: obj)
        self.listeners: list[Callable[[str, dict], None]] = []

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        await self._synced.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    def get(self, name: str) -> dict | None:
        return self.objects.get(name)

    def remember(self, obj: dict) -> None:
        """What this process just created, before its watch event arrives (so that a waiter
        never mistakes "not seen yet" for "gone")."""
        name = obj["metadata"]["name"]
        if name not in self.objects:
            self.objects[name] = self.trim(obj)

    async def _relist(self) -> None:
        listing = await self.client.list(self.kind, self.namespace, self.selector)
        fresh = {o["metadata"]["name"]: o for o in listing.get("items", [])
                 if _matches(o, self.labels)}
        before = self.objects
        self.objects = {name: self.trim(o) for name, o in fresh.items()}
        self._resource_version = (listing.get("metadata") or {}).get("resourceVersion", "")
        if self._synced.is_set():  # listed again after the watch expired: the changes missed
            for name, obj in fresh.items():
                old = before.get(name)
                if old is None:
                    self._tell("ADDED", obj)
                elif self._changed(old, obj):
                    self._tell("MODIFIED", obj)
            for name in before.keys() - fresh.keys():
                self._tell("DELETED", before[name])
        self._synced.set()

    async def _run(self) -> None:
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                # closed as soon as it is left (an expiry, an error), not when collected
                async with contextlib.aclosing(self.client.watch(
                        self.kind, self.namespace, selector=self.selector,
                        resource_version=self._resource_version,
                        timeout_seconds=self.timeout_seconds)) as events:
                    async for event in events:
                        kind, obj = event.get("type"), event.get("object") or {}
                        if kind == "ERROR":
                            raise KubeError(obj.get("code", 500), obj.get("reason", ""),
                                            obj.get("message", ""))
                        version = _version(obj)
                        if version:
                            self._resource_version = version
                        if kind == "BOOKMARK" or not _matches(obj, self.labels):
                            continue
                        self._apply(kind, obj)
                # ended cleanly (its timeoutSeconds): resume from where it was
            except asyncio.CancelledError:
                raise
            except KubeError as error:
                if error.status == 410:  # our resourceVersion expired: list again, now
                    log.info("watch of %s in %s expired; listing again", self.kind,
                             self.namespace)
                    need_list = True
                    continue
                log.warning("watch of %s in %s ended (%s); resuming", self.kind, self.namespace,
                            error)
                await asyncio.sleep(self.retry_seconds)
            except Exception as error:  # connection reset, API server restart, …
                log.warning("watch of %s in %s broke (%r); resuming", self.kind, self.namespace,
                            error)
                await asyncio.sleep(self.retry_seconds)

    def _changed(self, cached: dict, obj: dict) -> bool:
        if _version(cached) and _version(obj):
            return _version(cached) != _version(obj)
        return self.trim(obj) != cached  # a trim that drops the resourceVersion

    def _apply(self, kind: str, obj: dict) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.objects.pop(name, None)
        else:
            self.objects[name] = self.trim(obj)
        self._tell(kind, obj)

    def _tell(self, kind: str, obj: dict) -> None:
        """Listeners and the waiters of this object hear of a change (the cache has it)."""
        for listener in self.listeners:
            try:
                listener(kind, obj)
            except Exception:
                log.exception("a listener of %s failed", self.kind)
        for waiter in self._waiters.get(obj["metadata"]["name"], ()):
            waiter.set()

    async def wait_for(self, name: str, predicate: Callable[[dict | None], bool],
                       timeout: float | None = None) -> bool:
        """Wait until ``predicate(object or None)`` holds for the cached object ``name``;
        False on timeout. Only events of that object wake the waiter (no O(n) wake-ups)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not predicate(self.objects.get(name)):
            waiter = asyncio.Event()
            self._waiters.setdefault(name, set()).add(waiter)
            try:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return False
                await asyncio.wait_for(waiter.wait(), remaining)
            except asyncio.TimeoutError:
                return False
            finally:
                waiters = self._waiters.get(name)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._waiters[name]
        return True
