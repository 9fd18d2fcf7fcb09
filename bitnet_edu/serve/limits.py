"""Who is asking, and how often they may: hashed client ids and a per-client token bucket.

A classroom server is shared by thirty students; one student's loop that fires requests
must not starve the others.  Each client (its IP address: not a token it could make up anew
for every request) owns a bucket of
``burst`` tokens refilled at ``rate_per_min / 60`` per second; a request takes one token or is
refused with HTTP 429 and a ``Retry-After`` of the seconds until the next token.

Logs and metrics never see the raw id: :func:`client_hash` is a salted SHA-256, stable for the
life of the server (so one client's requests can be followed) and useless outside it.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
import time
from dataclasses import dataclass

__all__ = ["TokenBucket", "RateLimiter", "client_hash"]

_SALT = secrets.token_bytes(16)  # new at every start: a hash cannot be joined across runs


def client_hash(client_id: str) -> str:
    """12 hex digits of ``sha256(salt + client_id)``: the same client, the same hash."""
    return hashlib.sha256(_SALT + client_id.encode("utf-8", "replace")).hexdigest()[:12]


@dataclass
class TokenBucket:
    capacity: float
    refill_per_s: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take one token: 0.0 if granted, else the seconds until one is available."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.refill_per_s)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.refill_per_s


class RateLimiter:
    """``allow(client) -> 0.0`` (go on) or the seconds to wait.  ``rate_per_min <= 0``: no limit.

    Buckets of clients idle long enough to be full again are dropped, so memory stays bounded by
    the clients active in the last ``burst / rate`` seconds.
    """

    def __init__(self, rate_per_min: float = 60.0, burst: int = 10, clock=time.monotonic):
        if not math.isfinite(rate_per_min) or burst < 1:
            raise ValueError(f"rate must be a finite number and burst >= 1, got {rate_per_min}, "
                             f"{burst}")
        self.rate, self.burst, self.clock = float(rate_per_min), int(burst), clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def allow(self, client: str) -> float:
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            b = self._buckets.get(client)
            if b is None:
                b = self._buckets[client] = TokenBucket(self.burst, self.rate / 60.0, self.burst, now)
            wait = b.take(now)
            if len(self._buckets) > 1024:
                full = self.burst / (self.rate / 60.0)
                self._buckets = {k: v for k, v in self._buckets.items() if now - v.updated < full}
            return wait
