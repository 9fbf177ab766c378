"""Request throttling: one token bucket for every rate we keep to (restore requests, object writes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..errors import ConfigError


class TokenBucket:
    """A thread-safe token bucket: at most ``rate`` acquisitions per second, bursts up to ``burst``.

    ``clock`` and ``sleep`` are injectable so that tests can run on a simulated clock.
    """

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not rate or rate <= 0:
            raise ConfigError("bad_rate", f"the request rate must be positive, got {rate!r}")
        self.rate = float(rate)
        self.capacity = float(burst) if burst else max(1.0, self.rate / 10)
        self.clock = clock
        self.sleep = sleep
        self.tokens = self.capacity
        self.last = clock()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        """Take one token, waiting as long as needed."""
        while True:
            with self.lock:
                now = self.clock()
                self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
                self.last = now
                if self.tokens >= 1.0 - 1e-9:  # tolerance: float refill can fall short by an ulp forever
                    self.tokens = max(0.0, self.tokens - 1.0)
                    return
                wait = (1.0 - self.tokens) / self.rate
            self.sleep(wait)
