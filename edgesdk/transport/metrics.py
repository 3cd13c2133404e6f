"""Prometheus text-format metrics without a dependency: counters, gauges, histograms.

    m = Metrics()
    m.requests.inc(kind="infer")
    m.latency.observe(0.012)
    text = m.render()                     # what GET /metrics returns
    server = serve_metrics(m, "127.0.0.1", 9100)   # a daemon HTTP thread; server.shutdown()

The broker thread updates the metrics and the HTTP thread renders them; one lock keeps a
rendering consistent (the broker holds it for microseconds per update).
"""

from __future__ import annotations

import bisect
import contextlib
import math
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Latency buckets in seconds: 0.5 ms to 10 s, roughly x2.5 apart.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, lock: threading.Lock) -> None:
        self.name = name
        self.help = help_text
        self._lock = lock

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, lock: threading.Lock) -> None:
        super().__init__(name, help_text, lock)
        self._values: dict[tuple, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0.0)

    def total(self) -> float:
        return sum(self._values.values())

    def lines(self) -> list[str]:
        rows = self._values.items() or [((), 0.0)]
        return self.header() + [f"{self.name}{_labels(dict(k))} {_number(v)}" for k, v in rows]


class Summary(_Metric):
    """Sum and count per label value (a Prometheus summary without quantiles): a mean per
    device, say. At most `max_values` label values are kept; later ones count as "other",
    so a server with many devices exports a bounded page."""

    kind = "summary"

    def __init__(self, name: str, help_text: str, lock: threading.Lock, label: str,
                 max_values: int = 64) -> None:
        super().__init__(name, help_text, lock)
        self.label = label
        self.max_values = max_values
        self._values: dict[str, list[float]] = {}  # label value: [sum, count]

    def observe(self, value: float, label: str) -> None:
        with self._lock:
            entry = self._values.get(label)
            if entry is None:
                if len(self._values) >= self.max_values - 1:
                    label = "other"  # the last place on the page
                entry = self._values.setdefault(label, [0.0, 0])
            entry[0] += value
            entry[1] += 1

    def lines(self) -> list[str]:
        out = self.header()
        for value, (total, n) in self._values.items():
            labels = _labels({self.label: value})
            out += [f"{self.name}_sum{labels} {_number(total)}",
                    f"{self.name}_count{labels} {_number(n)}"]
        return out


class Gauge(_Metric):
    kind = "gauge"

    def __init__(self, name: str, help_text: str, lock: threading.Lock) -> None:
        super().__init__(name, help_text, lock)
        self._value = 0.0
        self._fn: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        self._value = float(value)

    def track(self, fn: Callable[[], float]) -> None:
        """Read the value from `fn` at each rendering instead (nothing on the hot path)."""
        self._fn = fn

    def value(self) -> float:
        if self._fn is not None:
            with contextlib.suppress(Exception):  # a racing read must not break a scrape
                self._value = float(self._fn())
        return self._value

    def lines(self) -> list[str]:
        return self.header() + [f"{self.name} {_number(self.value())}"]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, lock: threading.Lock,
                 buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help_text, lock)
        self.buckets = tuple(buckets)
        self._counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self._sum = 0.0

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        with self._lock:
            self._counts[i] += 1
            self._sum += value

    def count(self) -> int:
        return sum(self._counts)

    def lines(self) -> list[str]:
        out = self.header()
        running = 0
        for bound, n in zip(self.buckets + (math.inf,), self._counts, strict=True):
            running += n
            out.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {running}')
        out.append(f"{self.name}_sum {_number(self._sum)}")
        out.append(f"{self.name}_count {running}")
        return out


class Metrics:
    """Everything the server exports (names are prefixed edgesdk_)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        lk = self.lock
        self.requests = Counter("edgesdk_requests_total",
                                "Messages received from devices, by kind.", lk)
        self.replies = Counter("edgesdk_replies_total", "Replies sent, by kind.", lk)
        self.errors = Counter("edgesdk_errors_total", "Error replies and dropped messages, "
                              "by error code (malformed counts dropped garbage too).", lk)
        self.malformed = Counter("edgesdk_malformed_total",
                                 "Malformed messages (answered or dropped).", lk)
        self.worker_restarts = Counter("edgesdk_worker_restarts_total",
                                       "Worker processes restarted after a crash.", lk)
        self.auth_rejected = Counter("edgesdk_auth_rejected_total",
                                     "CURVE handshakes rejected: the device's public key is "
                                     "not in the allow directory.", lk)
        self.queue_length = Gauge("edgesdk_queue_length",
                                  "Requests waiting for a worker.", lk)
        self.workers_alive = Gauge("edgesdk_workers_alive", "Worker processes ready.", lk)
        self.workers_busy = Gauge("edgesdk_workers_busy", "Workers computing a request.", lk)
        self.server_seconds = Histogram("edgesdk_server_seconds",
                                        "Handler compute time per result.", lk)
        self.queue_seconds = Histogram("edgesdk_queue_seconds",
                                       "Time from receipt to the start of compute.", lk)
        self.request_seconds = Histogram("edgesdk_request_seconds",
                                         "Time from receipt to reply, per infer request.", lk)
        self.deadline_misses = Counter("edgesdk_deadline_misses_total",
                                       "Results sent after their request's deadline.", lk)
        self.refused = Counter("edgesdk_refused_total",
                               "Infer requests not computed, by reason: late (could not "
                               "finish within its budget), expired (its deadline passed in "
                               "the queue), busy (queue full), displaced (pushed out of a "
                               "full queue by a device with less of it).", lk)
        self.batch_size = Histogram("edgesdk_batch_size",
                                    "Requests a worker computed together, per batch.", lk,
                                    buckets=BATCH_BUCKETS)
        self.device_queue_seconds = Summary(
            "edgesdk_device_queue_seconds", "Time from receipt to the start of compute, per "
            "device: its CURVE key's name in the allow directory, else its IP address; "
            "63 devices at most, the rest as \"other\".", lk, "device")
        self.forwards = Counter("edgesdk_forwards_total",
                                "Chained requests forwarded to their next stage, by outcome: "
                                "the next stage's reply kind, or this stage's error code.", lk)
        self._all = [self.requests, self.replies, self.errors, self.malformed, self.forwards,
                     self.worker_restarts, self.auth_rejected, self.deadline_misses,
                     self.refused, self.queue_length,
                     self.workers_alive, self.workers_busy, self.server_seconds,
                     self.queue_seconds, self.request_seconds, self.batch_size,
                     self.device_queue_seconds]

    def render(self) -> str:
        with self.lock:
            lines = [line for metric in self._all for line in metric.lines()]
        return "\n".join(lines) + "\n"


def serve_metrics(metrics: Metrics, host: str, port: int) -> ThreadingHTTPServer:
    """Serve `GET /metrics` on (host, port) from a daemon thread. Port 0 picks a free one
    (read it from `server.server_address`)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics is served")
                return
            body = metrics.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # scrapes are not log events
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="edgesdk-metrics", daemon=True).start()
    return server


__all__ = ["Counter", "Gauge", "Histogram", "LATENCY_BUCKETS", "Metrics", "serve_metrics"]
