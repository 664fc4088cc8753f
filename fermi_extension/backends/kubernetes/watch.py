"""One list-and-watch per resource kind: a cache of Fermi's objects, kept current by a single
watch stream, that many waiters share.

A thousand running jobs cost one watch, not a thousand polls: ``wait_for(name, done)`` parks
on the cache and wakes when an event for that object arrives. A broken stream is resumed from
the last resourceVersion; an expired one (410 Gone) is listed again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from .kube_client import KubeClient, KubeError

log = logging.getLogger("fermi.kubernetes")


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
        self.objects = {name: self.trim(o) for name, o in fresh.items()}
        self._resource_version = (listing.get("metadata") or {}).get("resourceVersion", "")
        self._wake_all()
        self._synced.set()

    async def _run(self) -> None:
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                async for event in self.client.watch(
                        self.kind, self.namespace, selector=self.selector,
                        resource_version=self._resource_version,
                        timeout_seconds=self.timeout_seconds):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:  # our resourceVersion expired: list again
                            need_list = True
                            break
                        raise KubeError(obj.get("code", 500), obj.get("reason", ""),
                                        obj.get("message", ""))
                    version = (obj.get("metadata") or {}).get("resourceVersion")
                    if version:
                        self._resource_version = version
                    if kind == "BOOKMARK" or not _matches(obj, self.labels):
                        continue
                    await self._apply(kind, obj)
            except asyncio.CancelledError:
                raise
            except KubeError as error:
                if error.status == 410:
                    need_list = True
                log.warning("watch of %s in %s ended (%s); resuming", self.kind, self.namespace,
                            error)
                await asyncio.sleep(self.retry_seconds)
            except Exception as error:  # connection reset, API server restart, …
                log.warning("watch of %s in %s broke (%r); resuming", self.kind, self.namespace,
                            error)
                await asyncio.sleep(self.retry_seconds)

    async def _apply(self, kind: str, obj: dict) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.objects.pop(name, None)
        else:
            self.objects[name] = self.trim(obj)
        for listener in self.listeners:
            try:
                listener(kind, obj)
            except Exception:
                log.exception("a listener of %s failed", self.kind)
        for waiter in self._waiters.get(name, ()):
            waiter.set()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
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
