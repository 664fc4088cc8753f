"""The autoscaler's decision, on in-flight requests per replica (KServe's concurrency metric).

Scale up at once when the recent in-flight average needs more replicas; scale down only when
every recommendation over the stabilisation window wanted fewer (HPA's rule), so a burst that
ends does not make replicas come and go.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Autoscaler:
    target: float
    low: int
    high: int
    delay: float
    # seconds of in-flight samples averaged for a recommendation: the router's in-flight count is
    # an instant reading, noisy under steady load; 6 s smooths it and still scales up in ~2 s
    window: float = 6.0
    # like the HPA: no change while the load per replica is within 10% of the target
    tolerance: float = 0.1
    samples: deque = field(default_factory=deque)
    recommendations: deque = field(default_factory=deque)

    def observe(self, now: float, in_flight: float) -> None:
        self.samples.append((now, in_flight))
        while self.samples and now - self.samples[0][0] > self.window:
            self.samples.popleft()

    def recommend(self, current: int | None = None) -> int:
        if not self.samples:
            return self.low
        average = sum(v for _, v in self.samples) / len(self.samples)
        needed = average / self.target
        if current and abs(needed / current - 1) <= self.tolerance:
            needed = current
        return min(max(math.ceil(needed - 1e-9), self.low), self.high)

    def decide(self, now: float, current: int) -> tuple[int, str | None]:
        """Desired replicas and, when it changes, the reason in words."""
        wanted = self.recommend(current)
        self.recommendations.append((now, wanted))
        while self.recommendations and now - self.recommendations[0][0] > self.delay:
            self.recommendations.popleft()
        average = sum(v for _, v in self.samples) / len(self.samples) if self.samples else 0.0
        if current < self.low or current > self.high:
            bounded = min(max(current, self.low), self.high)
            return bounded, f"bounds are {self.low}–{self.high}: {current} → {bounded} replicas"
        if wanted > current:
            return wanted, (
                f"{average:.1f} requests in flight for a target of {self.target:g} per replica: "
                f"scale up {current} → {wanted}"
            )
        settled = max(r for _, r in self.recommendations)
        if settled < current:
            return settled, (
                f"in-flight requests ({average:.1f}) needed only {settled} replica(s) for "
                f"{self.delay:g} s: scale down {current} → {settled}"
            )
        return current, None
