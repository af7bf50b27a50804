"""Server counters, rendered in the Prometheus text format (no client library needed)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Metrics"]

_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_REWARD_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass
class Histogram:
    """A Prometheus histogram: cumulative bucket counts, sum and count."""

    bounds: tuple[float, ...]
    buckets: list[int] = field(init=False)
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.buckets = [0] * len(self.bounds)

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, le in enumerate(self.bounds):
            if value <= le:
                self.buckets[i] += 1

    def lines(self, name: str, help_: str) -> list[str]:
        """The exposition-format lines of this histogram under ``name``."""
        out = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
        out += [f'{name}_bucket{{le="{le:g}"}} {n}' for le, n in zip(self.bounds, self.buckets)]
        out += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum:g}",
                f"{name}_count {self.count}"]
        return out


@dataclass
class Metrics:
    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    items: int = 0
    item_errors: int = 0
    #: ``item_errors`` by ``FlipResult.error_kind``
    item_error_kinds: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    batch_errors: int = 0
    cancelled_items: int = 0
    batch_items_sum: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    latency: Histogram = field(default_factory=lambda: Histogram(_BUCKETS))
    parse_failures: int = 0
    truncated: int = 0
    echo_masked: int = 0
    markup_defused: int = 0
    reward: Histogram = field(default_factory=lambda: Histogram(_REWARD_BUCKETS))

    def record_request(self, route: str, status: int, seconds: float) -> None:
        self.requests[(route, status)] += 1
        self.latency.observe(seconds)

    def record_batch(self, results: Sequence[Any], seconds: float) -> None:
        """Count a scored batch: what an operator watches for reward collapse or hacking."""
        self.batches += 1
        self.items += len(results)
        self.batch_items_sum += len(results)
        for r in results:
            self.item_errors += r.error is not None
            if r.error is not None:
                self.item_error_kinds[r.error_kind or "unknown"] += 1
            self.parse_failures += r.raw_output is not None and not r.parse_ok
            self.truncated += bool(r.truncated)
            self.echo_masked += bool(r.extra.get("echo_masked_words"))
            self.markup_defused += bool(r.extra.get("markup_defused"))
            if r.reward is not None and r.error is None:
                self.reward.observe(r.reward)

    def render(self, gauges: dict[str, float], engine: Callable[[], dict[str, int]],
               closed: Mapping[str, int] | None = None) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP fliprm_{name} {help_}")
            out.append(f"# TYPE fliprm_{name} {kind}")
            out.extend(f"fliprm_{name}{labels} {value:g}" for labels, value in samples)

        metric(
            "requests_total",
            "counter",
            "HTTP requests by route and status code.",
            [(f'{{route="{r}",code="{c}"}}', v) for (r, c), v in sorted(self.requests.items())],
        )
        metric("items_total", "counter", "Items scored.", [("", self.items)])
        metric(
            "item_errors_total",
            "counter",
            "Items whose result carries an error.",
            [("", self.item_errors)],
        )
        metric(
            "item_error_kinds_total",
            "counter",
            "Items whose result carries an error, by kind (bad_input, backend, timeout, "
            "overflow, parse, internal).",
            [(f'{{kind="{k}"}}', v) for k, v in sorted(self.item_error_kinds.items())],
        )
        metric("batches_total", "counter", "Batches sent to the backend.", [("", self.batches)])
        metric("batch_errors_total", "counter", "Requests whose scoring call raised (their items "
               "were then scored one by one).", [("", self.batch_errors)])
        metric("cancelled_items_total", "counter", "Items dropped or cancelled because their "
               "client was gone (disconnected or timed out).", [("", self.cancelled_items)])
        metric(
            "batch_items_sum",
            "counter",
            "Sum of batch sizes (mean = sum / batches).",
            [("", self.batch_items_sum)],
        )
        metric(
            "rejected_total",
            "counter",
            "Requests refused (queue_full, timeout, too_large).",
            [(f'{{reason="{k}"}}', v) for k, v in sorted(self.rejected.items())],
        )
        for name, help_, value in (
            ("parse_failures_total", "Items whose judge output did not parse (or was cut).",
             self.parse_failures),
            ("truncated_total", "Items whose response was cut to fit.", self.truncated),
            ("echo_masked_total", "Items where the echo guard masked copied instruction text.",
             self.echo_masked),
            ("markup_defused_total", "Items whose response held chat-template or delimiter "
             "markup (defused).", self.markup_defused),
        ):
            metric(name, "counter", help_, [("", value)])
        if closed is not None:
            metric(
                "connections_closed_total",
                "counter",
                "Connections the server closed: header_timeout (a request did not arrive whole "
                "in time), evicted (waiting longest at the connection cap), refused (503 at "
                "the cap).",
                [(f'{{reason="{k}"}}', closed.get(k, 0))
                 for k in ("header_timeout", "evicted", "refused")],
            )
        for name, value in gauges.items():
            metric(name, "gauge", name.replace("_", " ") + ".", [("", value)])
        for name, value in engine().items():
            metric(f"backend_{name}_total", "counter", f"Engine {name}.", [("", value)])
        out.extend(self.latency.lines("fliprm_request_latency_seconds", "Request latency."))
        out.extend(self.reward.lines("fliprm_reward",
                                     "Rewards of scored items (collapse or hacking shows here)."))
        return "\n".join(out) + "\n"
