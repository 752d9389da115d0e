"""`cryptomon worker`: Kafka -> TimescaleDB, crash-safe, exactly one row per event: consume, buffer per
partition, write on several connections, commit offsets only after the database (docs/design.md).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cryptomon.backoff import Backoff
from cryptomon.diskguard import DiskGuard, DiskNearlyFull
from cryptomon.kafka.clients import STAGE_CONSUMER, ClusterView, cluster_view, consumer_config
from cryptomon.kafka.security import librdkafka_security
from cryptomon.kafka.topics import topic_name
from cryptomon.names import BOOK_TICKER, TRADES
from cryptomon.observability import health_server
from cryptomon.runtime import tune_gc
from cryptomon.settings import Settings
from cryptomon.stopping import stop_on_signals
from cryptomon.worker.batch import Batch, Partition
from cryptomon.worker.ordering import CommitOrder
from cryptomon.worker.rows import DeadLetter
from cryptomon.worker.sink import DatabaseUnavailable, TimescaleSink

log = logging.getLogger(__name__)

# Offsets of written batches are committed together, at most this often (a synchronous commit is a
# broker round trip of a few ms; per batch it would take more time than parsing the batch). Rebalances,
# pauses and shutdown commit at once. What a crash leaves uncommitted is replayed as no-ops.
COMMIT_INTERVAL_S = 0.2


# what holds the inserts back: consumption pauses, nothing is committed, and it is retried with backoff
HOLD = (DatabaseUnavailable, DiskNearlyFull)


@dataclass
class Writer:
    """A thread and the database connection only it uses (and the main thread while none is writing)."""

    sink: TimescaleSink
    thread: ThreadPoolExecutor


class Worker:
    """`cryptomon worker`: consume, buffer per partition, write on several connections, commit after the database."""

    def __init__(self, settings: Settings, health_port: int | None = None):
        self.settings = settings
        self.table_of = {topic_name(TRADES): TRADES, topic_name(BOOK_TICKER): BOOK_TICKER}
        self.batches: dict[Partition, Batch] = {}
        self.writers = [
            Writer(TimescaleSink(settings.pg_dsn), ThreadPoolExecutor(1, f"cryptomon-db-writer-{i}"))
            for i in range(settings.worker_writers)
        ]
        self.idle = list(self.writers)
        self.order: CommitOrder[Writer] = CommitOrder()  # batches being written, committed in Kafka's order
        self.last_commit = 0.0
        self.disk = DiskGuard.for_state_dir(settings.state_dir, settings.disk_min_free_mb)
        self.stop_event = threading.Event()
        self.db_ok = False
        self.paused = False
        self.retry_at = 0.0
        self.assigned: set[Partition] = set()
        self.lag: dict[str, int] = {}
        self.last_flush = time.monotonic()
        self.rows_inserted = {TRADES: 0, BOOK_TICKER: 0}
        self.dead_letters = 0
        self.db_failures = 0
        self.disk_pauses = 0
        self.pause_reason: Exception | None = None
        self.cluster = ClusterView([], 0, [])  # as librdkafka's last statistics report showed it
        self.consumer = Consumer(
            consumer_config(
                settings.kafka_bootstrap,
                settings.worker_group,
                extra={
                    **librdkafka_security(settings),
                    "enable.auto.offset.store": False,
                    "partition.assignment.strategy": "cooperative-sticky",
                    **STAGE_CONSUMER,
                    "statistics.interval.ms": 2000,
                    "stats_cb": self._on_stats,
                    "client.id": "cryptomon-worker",
                },
            )
        )
        self.registry = CollectorRegistry()
        r = self.registry
        self.m_rows = Counter("cryptomon_worker_rows_inserted", "Rows inserted", ["table"], registry=r)
        self.m_dead = Counter("cryptomon_worker_dead_letters", "Messages sent to dead_letters", ["table"], registry=r)
        self.m_batch = Histogram(
            "cryptomon_worker_batch_size",
            "Messages per flushed batch",
            ["table"],
            registry=r,
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
        )
        self.m_flush = Histogram(
            "cryptomon_worker_flush_seconds",
            "Database write latency per batch",
            ["table"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        # each table's series, looked up once (labels() takes a lock and checks its values: per batch, 2% of the time)
        self.per_table = {
            t: (self.m_rows.labels(t), self.m_dead.labels(t), self.m_batch.labels(t), self.m_flush.labels(t))
            for t in self.table_of.values()
        }
        self.m_lag = Gauge("cryptomon_worker_consumer_lag", "Messages behind the log end", ["partition"], registry=r)
        self.m_db = Gauge("cryptomon_worker_db_up", "1 when the last database operation succeeded", registry=r)
        self.m_db_fail = Counter("cryptomon_worker_db_failures", "Failed database attempts", registry=r)
        self.m_disk = Counter(
            "cryptomon_worker_disk_full_pauses", "Flushes held back by a nearly full disk", registry=r
        )
        self.m_disk_free = Gauge(
            "cryptomon_worker_disk_free_bytes", "Free bytes on the state folder's disk", registry=r
        )
        self.m_disk_free.set_function(self._disk_free)
        Gauge(
            "cryptomon_worker_copy_conflicts",
            "COPYs that met a row already written (the batch then went by INSERT … ON CONFLICT)",
            registry=r,
        ).set_function(self._copy_conflicts)
        port = settings.worker_health_port if health_port is None else health_port
        self.health_server = health_server(settings, port, self.health, r)

    # ---------------------------------------------------------------- Kafka callbacks

    def _on_stats(self, raw: str) -> None:
        stats = orjson.loads(raw)
        self.cluster = cluster_view(stats)
        lag = {}
        for topic, t in stats.get("topics", {}).items():
            for pid, p in t.get("partitions", {}).items():
                if pid != "-1" and p.get("consumer_lag", -1) >= 0 and (topic, int(pid)) in self.assigned:
                    lag[f"{topic}/{pid}"] = p["consumer_lag"]
        self.lag = lag
        for name, value in lag.items():
            self.m_lag.labels(name).set(value)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned |= {(p.topic, p.partition) for p in partitions}
        log.info("assigned %s", sorted(f"{p.topic}/{p.partition}" for p in partitions))
        if self.paused:
            consumer.pause(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Before losing partitions: flush and commit what was buffered from them, or drop it uncommitted
        (the next owner replays it). Never commit rows that are not in the database."""
        revoked = {(p.topic, p.partition) for p in partitions}
        log.info("revoked %s", sorted(f"{t}/{p}" for t, p in revoked))
        self._settle()
        left = self._flush_all(revoked & self.batches.keys())
        if left:
            log.warning("database unavailable during rebalance: %d buffered messages left uncommitted", left)
        for tp in revoked:
            self.batches.pop(tp, None)  # the next owner replays what was not written
        self._commit()
        self.assigned -= revoked

    # ---------------------------------------------------------------- main loop

    def run(self) -> None:
        if self.health_server:
            self.health_server.start()
        topics = list(self.table_of)
        self.consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke)
        backoff = Backoff(0.5, self.settings.db_retry_max, reset_after=0)
        log.info(
            "worker consuming %s as group %s with %d database writers",
            topics,
            self.settings.worker_group,
            len(self.writers),
        )
        try:
            while not self.stop_event.is_set():
                try:
                    self._step(backoff)
                except HOLD as exc:
                    self._settle()
                    self._commit()
                    self._db_failed(exc)
                    if not self.paused:
                        self._pause()
                    self.retry_at = time.monotonic() + backoff.next_delay()
        finally:
            self._shutdown()

    def _step(self, backoff: Backoff) -> None:
        """One turn of the loop. A HOLD error out of it pauses consumption."""
        now = time.monotonic()
        if self.paused:  # nothing in flight: every writer is idle
            # stay in the group (poll serves rebalances and heartbeats) without fetching more
            self.consumer.poll(0.2)
            if now < self.retry_at:
                return
            if low := self.disk.check():
                raise DiskNearlyFull(low)
            if not self.writers[0].sink.ping():
                raise DatabaseUnavailable("still unavailable")
            log.info(
                "%s: flushing and resuming",
                "disk has room again" if isinstance(self.pause_reason, DiskNearlyFull) else "database is back",
            )
            backoff.success(0)
        elif low := self.disk.check():  # hold off before consuming what could not be written
            raise DiskNearlyFull(low)
        msgs = (
            []
            if self.paused
            else self.consumer.consume(self.settings.flush_max_rows, self.settings.worker_poll_timeout)
        )
        skew = self.settings.max_clock_skew_ms
        topic = partition = batch = None
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka: %s", err)
                continue
            # only appended here: the batch's rows are worked out on its writer's thread (cryptomon.worker.batch);
            # a consume's messages come in runs of one partition, so the batch is looked up once a run
            t, p = m.topic(), m.partition()
            if p != partition or t != topic:
                topic, partition = t, p
                batch = self.batches.get((t, p))  # type: ignore[arg-type]
                if batch is None:
                    batch = self.batches[(t, p)] = Batch(self.table_of[t], skew, (t, p), started=now)  # type: ignore[index, arg-type]
            batch.messages.append(m)  # type: ignore[union-attr]
        drained = len(msgs) < self.settings.flush_max_rows
        self._reap()
        for tp, batch in list(self.batches.items()):
            if batch.due(
                time.monotonic(), self.settings.flush_max_rows, self.settings.flush_max_seconds, drained or self.paused
            ):
                while not self.idle:  # a writer is freed when its batch heads its partition's queue
                    wait(self.order.busy(), return_when=FIRST_COMPLETED)
                    self._reap()
                self._submit(tp)
        if self.paused:
            self._settle(raise_first=True)
            self._resume()
        if time.monotonic() - self.last_commit >= COMMIT_INTERVAL_S:
            self._commit()

    # ---------------------------------------------------------------- writing

    def _submit(self, tp: Partition) -> None:
        """Seal the partition's buffer and hand it to an idle writer; the partition buffers anew."""
        if low := self.disk.check():
            raise DiskNearlyFull(low)
        batch = self.batches.pop(tp)
        writer = self.idle.pop()
        self.order.push(tp, batch, writer.thread.submit(self._write, writer.sink, batch), writer)

    @staticmethod
    def _write(sink: TimescaleSink, batch: Batch) -> tuple[int, list[DeadLetter], float]:  # on a writer thread
        started = time.monotonic()
        p = batch.parsed()
        inserted, rejected = sink.write(batch.table, p.rows, p.poison, batch.dead_letter_for, p.text)
        return inserted, rejected, time.monotonic() - started

    def _reap(self) -> None:
        """Take in the written batches that head their partition's queue (their offsets are staged for the
        next commit) and free their writers. A failed batch goes back in front of its partition's buffer,
        with the partition's later batches (see cryptomon.worker.ordering), and its error is raised."""
        landed, failed = self.order.reap()
        for done in landed:
            self.idle.append(done.writer)
            self._account(done.batch, *done.result)
        for f in failed:
            self.idle.extend(f.writers)
            if f.partition in self.batches:
                f.batch.absorb(self.batches[f.partition])
            self.batches[f.partition] = f.batch
        if failed:
            raise failed[0].error

    def _account(self, batch: Batch, inserted: int, rejected: list[DeadLetter], seconds: float) -> None:
        dead = len(batch.poison) + len(rejected)
        if dead:
            log.warning("%d %s messages sent to dead_letters", dead, batch.table)
            for letter in batch.poison + rejected:
                log.debug("dead letter: %s", letter.error)
        self.rows_inserted[batch.table] += inserted
        self.dead_letters += dead
        rows, dead_letters, size, flush = self.per_table[batch.table]
        rows.inc(inserted)
        dead_letters.inc(dead)
        size.observe(len(batch))
        flush.observe(seconds)
        self.m_db.set(1)
        self.db_ok = True
        self.last_flush = time.monotonic()

    def _settle(self, raise_first: bool = False) -> None:
        """Wait for every batch in flight and take them in; failed ones go back to their buffers.
        Afterwards every writer is idle. With raise_first, a failure is raised then."""
        self.order.wait_all()
        try:
            self._reap()
        except DatabaseUnavailable:
            if raise_first:
                raise

    def _flush_all(self, partitions: set[Partition]) -> int:
        """Write these partitions' buffers now, one after the other (nothing in flight), and stage their
        offsets. Stops at the first failure (no connect timeout per partition); returns the number of
        messages left in their buffers."""
        for tp in sorted(partitions):
            try:
                self._submit(tp)
                self._settle(raise_first=True)
            except HOLD:
                break
        return sum(len(self.batches[tp]) for tp in partitions if tp in self.batches)

    def _commit(self) -> None:
        """Commit, synchronously, the offsets of the batches that are in the database."""
        staged = self.order.take_offsets()
        offsets = [TopicPartition(t, p, o) for (t, p), o in staged.items() if (t, p) in self.assigned]
        self.last_commit = time.monotonic()
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                # the rows are in the database; a replay of these offsets will be a no-op
                log.warning("offset commit failed (%s): the batches may be replayed, harmlessly", exc)

    def _db_failed(self, exc: Exception) -> None:
        self.pause_reason = exc
        if isinstance(exc, DiskNearlyFull):
            self.disk_pauses += 1
            self.m_disk.inc()
            log.error("%s: inserts and consumption paused, nothing committed; resuming when there is room", exc)
            return
        self.db_ok = False
        self.db_failures += 1
        self.m_db.set(0)
        self.m_db_fail.inc()
        log.warning("database unavailable (%s): consumption paused, nothing committed", exc)

    def _pause(self) -> None:
        self.paused = True
        self.consumer.pause([TopicPartition(t, p) for t, p in self.assigned])

    def _resume(self) -> None:
        self.paused = False
        self.pause_reason = None
        self.consumer.resume([TopicPartition(t, p) for t, p in self.assigned])

    def _shutdown(self) -> None:
        log.info("stopping: flushing buffered rows")
        self._settle()  # a failed batch goes back to its buffer and is tried once more
        if left := self._flush_all(set(self.batches)):
            log.warning(
                "cannot flush at shutdown (database unavailable): %d messages left uncommitted (replayed on restart)",
                left,
            )
        self._commit()
        for w in self.writers:
            w.thread.shutdown()
            w.sink.close()
        self.consumer.close()  # leaves the group: partitions move at once
        if self.health_server:
            self.health_server.stop()
        log.info("stopped: %s rows inserted, %d dead letters", self.rows_inserted, self.dead_letters)

    # ---------------------------------------------------------------- health

    def _disk_free(self) -> float:
        st = self.disk.status()
        return float("nan") if st is None else st.free_bytes

    def _copy_conflicts(self) -> int:
        return sum(w.sink.copy_conflicts for w in self.writers)

    def health(self) -> tuple[bool, dict]:
        age = time.monotonic() - self.last_flush
        total_lag = sum(self.lag.values())
        body = {
            "db_reachable": self.db_ok,
            "paused": self.paused,
            "pause_reason": str(self.pause_reason) if self.pause_reason else None,
            "disk": self.disk.as_dict(),
            "disk_full_pauses": self.disk_pauses,
            "consumer_lag": self.lag,
            "consumer_lag_total": total_lag,
            "rows_inserted": self.rows_inserted,
            "dead_letters": self.dead_letters,
            "copy_conflicts": self._copy_conflicts(),
            "buffered": {
                t: sum(len(b) for b in list(self.batches.values()) if b.table == t) for t in self.table_of.values()
            },
            "writing": self.order.messages(),
            "writers": len(self.writers),
            "last_flush_seconds_ago": round(age, 3),
            "db_failures": self.db_failures,
            "assigned_partitions": sorted(f"{t}/{p}" for t, p in self.assigned),
            "kafka": self.cluster.as_dict(),
        }
        stuck = total_lag > 0 and age > max(30.0, 10 * self.settings.flush_max_seconds)
        return (not self.paused) and not stuck, body


def main(settings: Settings) -> None:
    worker = Worker(settings)
    stop_on_signals(worker.stop_event)
    tune_gc()  # start-up is over: the loop's garbage is acyclic
    worker.run()
