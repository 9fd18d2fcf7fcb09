"""The server's Prometheus metrics (``GET /metrics``), in a registry of its own.

One registry per app (not prometheus-client's global one), so two servers in one process (a
test, a notebook restarting its server) never collide.  Names follow Prometheus conventions:
``_total`` counters, ``_seconds`` histograms.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ServerMetrics"]

_LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
_TTFT = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16)


class ServerMetrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        p = "bitnet_edu_"
        self.requests = Counter(p + "requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram(p + "request_latency_seconds", "Time from request to last byte",
                                 ["endpoint"], buckets=_LATENCY, registry=r)
        self.ttft = Histogram(p + "time_to_first_token_seconds",
                              "Time from request to the first generated token",
                              ["endpoint"], buckets=_TTFT, registry=r)
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens processed", registry=r)
        self.completion_tokens = Counter(p + "completion_tokens", "Tokens generated", registry=r)
        self.tokens_per_s = Gauge(p + "decode_tokens_per_second",
                                  "Aggregate decode rate of the batch scheduler (all sequences)",
                                  registry=r)
        self.queue_depth = Gauge(p + "queue_depth", "Requests waiting for a batch slot",
                                 registry=r)
        self.running = Gauge(p + "running_requests", "Requests in the decode batch", registry=r)
        self.batch_size = Histogram(p + "batch_size", "Sequences per batched decode step",
                                    buckets=(1, 2, 4, 8, 12, 16, 24, 32, 64), registry=r)
        self.cache = Counter(p + "response_cache", "Response cache lookups by result",
                             ["result"], registry=r)
        self.cache_hit_ratio = Gauge(p + "response_cache_hit_ratio",
                                     "Response cache hits / lookups since start", registry=r)
        self.rate_limited = Counter(p + "rate_limited", "Requests refused by the rate limit",
                                    registry=r)
