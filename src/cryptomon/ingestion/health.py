"""What the ingestion reports: its counters, one typed reading of them (`IngestHealth`), the `/health` body
made from that reading and the Prometheus view of the same reading (nothing read back by string keys)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from cryptomon.kafka.clients import ClusterView
from cryptomon.latency import LatencyHistogram


@dataclass
class IngestStats:
    """The ingestion's own counters, bumped on the hot path."""

    produced: Counter = field(default_factory=Counter)  # per kind
    duplicates: int = 0
    late: int = 0
    dead_letters: Counter = field(default_factory=Counter)  # per reason
    book_ticker_gaps: int = 0
    universe_changes: int = 0


@dataclass(frozen=True)
class RestReading:
    """The REST client's side of a reading: requests, weight, limits hit."""

    requests: int
    weight_used_1m: int | None
    weight_budget_1m: int
    rate_limited_429: int
    banned_418: int


@dataclass(frozen=True)
class IngestHealth:
    """One reading of everything the ingestion reports, taken at a scrape or a /health request."""

    healthy: bool
    connected: bool
    connections: list[dict]
    symbols: int
    instance: str
    seconds_since_last_message: float | None
    messages_produced: dict[str, int]
    messages_delivered: dict[str, int]
    producer_queue: int
    frames_received: int
    reconnects: int
    duplicates_dropped: int
    late_arrivals: int
    gaps_found: int
    gaps_open: int
    ids_missed: int
    ids_pending_backfill: int
    oldest_open_gap_seconds: float | None
    resumed_from_kafka: int
    baseline_resets: int
    resume_ids_skipped: int
    gaps_filled: int
    events_backfilled: int
    ids_unfillable: int
    unfillable_reasons: list
    backfill_page_failures: int
    rest: RestReading
    state_entries_published: int
    book_ticker_gaps: int
    delivery_failures: int
    dead_letters: dict[str, int]
    kafka_last_error: str | None
    disk: dict | None
    disk_free_bytes: int | None
    disk_full_pauses: int
    tasks: dict[str, dict]  # per long-lived task: running, restarts, last error
    task_restarts: int
    kafka: ClusterView  # as the producer's last statistics report showed it
    produce_retries: int
    seconds_since_last_ack: float | None
    produce_latency: LatencyHistogram  # a copy: produce() -> acknowledged, every delivery since start
    depth: dict | None  # the snapshot fetcher's counts (SnapshotFetcher.health); None when the book is off

    def body(self) -> dict:
        """The /health JSON."""
        return {
            "connected": self.connected,
            "connections": self.connections,
            "symbols": self.symbols,
            "instance": self.instance,
            "seconds_since_last_message": self.seconds_since_last_message,
            "messages_produced": self.messages_produced,
            "messages_delivered": self.messages_delivered,
            "producer_queue": self.producer_queue,
            "reconnects": self.reconnects,
            "duplicates_dropped": self.duplicates_dropped,
            "late_arrivals": self.late_arrivals,
            "gaps_found": self.gaps_found,
            "gaps_open": self.gaps_open,
            "ids_missed": self.ids_missed,
            "ids_pending_backfill": self.ids_pending_backfill,
            "oldest_open_gap_seconds": self.oldest_open_gap_seconds,
            "resumed_from_kafka": self.resumed_from_kafka,
            "baseline_resets": self.baseline_resets,
            "resume_ids_skipped": self.resume_ids_skipped,
            "gaps_filled": self.gaps_filled,
            "events_backfilled": self.events_backfilled,
            "ids_unfillable": self.ids_unfillable,
            "unfillable_reasons": self.unfillable_reasons,
            "backfill_page_failures": self.backfill_page_failures,
            "rest": {
                "requests": self.rest.requests,
                "weight_used_1m": self.rest.weight_used_1m,
                "weight_budget_1m": self.rest.weight_budget_1m,
                "rate_limited_429": self.rest.rate_limited_429,
                "banned_418": self.rest.banned_418,
            },
            "state_entries_published": self.state_entries_published,
            "book_ticker_gaps": self.book_ticker_gaps,
            "delivery_failures": self.delivery_failures,
            "dead_letters": self.dead_letters,
            "kafka_last_error": self.kafka_last_error,
            "disk": self.disk,
            "disk_full_pauses": self.disk_full_pauses,
            "depth": self.depth,
            "tasks": self.tasks,
            "task_restarts": self.task_restarts,
            "kafka": {
                **self.kafka.as_dict(),
                "produce_retries": self.produce_retries,
                "seconds_since_last_ack": self.seconds_since_last_ack,
                "produce_latency": self.produce_latency.summary_ms(),
            },
        }


class IngestCollector:
    """Prometheus view of the ingestion, made from one reading at scrape time (nothing on the hot path)."""

    def __init__(self, read: Callable[[], IngestHealth]):
        self.read = read

    def collect(self) -> Iterator[Metric]:
        h = self.read()
        yield _labelled("messages_produced", "Events produced to Kafka", "stream", h.messages_produced)
        yield _labelled("dead_letters", "Frames sent to the dead-letter topic", "reason", h.dead_letters)
        yield _labelled(
            "rest_rate_limited",
            "REST answers 429 and 418",
            "status",
            {"429": h.rest.rate_limited_429, "418": h.rest.banned_418},
        )
        for name, doc, value in (
            ("frames_received", "WebSocket frames received", h.frames_received),
            ("reconnects", "WebSocket reconnects and rotations", h.reconnects),
            ("duplicates_dropped", "Duplicate events dropped", h.duplicates_dropped),
            ("gaps_found", "Gaps in trade/aggTrade ids", h.gaps_found),
            ("gaps_filled", "Gaps filled from REST", h.gaps_filled),
            ("events_backfilled", "Events fetched from REST", h.events_backfilled),
            ("ids_unfillable", "Missing ids the exchange no longer had", h.ids_unfillable),
            ("resume_ids_skipped", "Ids missed between two runs, too many to backfill", h.resume_ids_skipped),
            ("book_ticker_gaps", "bookTicker gaps (reconnects) per symbol", h.book_ticker_gaps),
            ("delivery_failures", "Kafka delivery failures (each retried)", h.delivery_failures),
            ("disk_full_pauses", "Disconnects because the state folder's disk was nearly full", h.disk_full_pauses),
            ("rest_requests", "REST requests sent", h.rest.requests),
            ("task_restarts", "Long-lived tasks restarted after an unexpected error", h.task_restarts),
            ("produce_retries", "Deliveries sent again after librdkafka gave up", h.produce_retries),
        ):
            yield CounterMetricFamily(f"cryptomon_ingest_{name}", doc, value=value)
        for name, doc, gauge in (
            ("connected", "1 while every WebSocket is connected", int(h.connected)),
            ("connections", "WebSocket connections", len(h.connections)),
            ("symbols", "Symbols followed", h.symbols),
            ("gaps_open", "Open gaps in trade/aggTrade ids", h.gaps_open),
            ("ids_missing", "Ids waiting for the backfill", h.ids_pending_backfill),
            ("oldest_open_gap_seconds", "Age of the oldest open gap", h.oldest_open_gap_seconds or 0.0),
            ("rest_weight_used", "REST weight used in the current minute (X-MBX-USED-WEIGHT-1M)",
             h.rest.weight_used_1m or 0),
            ("seconds_since_last_message", "Age of the last frame", _or_nan(h.seconds_since_last_message)),
            ("producer_queue", "Messages waiting in the producer", h.producer_queue),
            ("disk_free_bytes", "Free bytes on the state folder's disk", _or_nan(h.disk_free_bytes)),
            ("partitions_without_leader", "Partitions written to that have no leader", len(h.kafka.leaderless)),
            ("kafka_brokers_up", "Kafka brokers the producer is connected to", h.kafka.up),
            ("kafka_nodes", "Kafka nodes the cluster's metadata lists, as the producer last saw it", len(h.kafka.nodes)),
            ("seconds_since_last_ack", "Age of the last acknowledged delivery", _or_nan(h.seconds_since_last_ack)),
        ):  # fmt: skip
            yield GaugeMetricFamily(f"cryptomon_ingest_{name}", doc, value=gauge)
        if h.depth is not None:
            for name, doc, key in (
                ("depth_snapshots_fetched", "Depth snapshots fetched from /api/v3/depth", "fetched"),
                ("depth_snapshots_used", "Depth snapshots that bridged their diffs, sent to binance.depth", "used"),
                ("depth_snapshots_too_old", "Depth snapshots older than the first diff waiting (fetched again)", "too_old"),
                ("depth_snapshot_failures", "Depth snapshot requests that failed (tried again)", "failures"),
                ("depth_snapshot_weight", "REST weight spent on depth snapshots", "weight_spent"),
                ("depth_gaps", "Depth diffs that did not follow the last one: books resynced", "gaps"),
            ):  # fmt: skip
                yield CounterMetricFamily(f"cryptomon_ingest_{name}", doc, value=h.depth[key])
            yield GaugeMetricFamily("cryptomon_ingest_depth_books_waiting", "Books waiting for a snapshot",
                                    value=h.depth["waiting"])  # fmt: skip
            yield _labelled("depth_snapshot_weight_by_symbol", "REST weight spent on a symbol's depth snapshots",
                            "symbol", h.depth["weight_by_symbol"])  # fmt: skip
        yield h.produce_latency.metric(
            "cryptomon_ingest_produce_latency_seconds", "Time from produce to the broker's acknowledgement (acks=all)"
        )


def _labelled(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(f"cryptomon_ingest_{name}", doc, labels=[label])
    for key, n in values.items():
        family.add_metric([key], n)
    return family


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)
