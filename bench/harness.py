"""`bench/run`: run the ingestion, worker, Spark and end-to-end benchmarks one after the other (each on
a Kafka + TimescaleDB of its own, never two at once on this 2-core machine), then write one JSON file
and the Markdown report `docs/benchmarks.md`."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = (
    "sim", "ingest", "worker", "spark", "e2e", "market", "market_depth", "market_cluster", "book", "market_book"
)  # fmt: skip
# only with --only: the whole market with every book needs more than this 2-core machine (README, Benchmarks)
OPT_IN = ("market_book",)
SOAKS = ("soak", "sim_soak", "market_soak")  # long runs, each kept in bench/results/<name>.json
# benchmarks that are a mode of another script
# the cluster and order-book runs: 50 of the market's symbols for a minute with the book's streams on, on one
# Kafka node and on three (on this 2-core machine three nodes and the book at the whole market's load are more
# than it carries; the same load on one and on three nodes is the comparison)
SMALL_MARKET = ["--whole-market", "--quick", "--seconds", "60", "--depth"]
SCRIPTS = {
    "market": ("e2e", ["--whole-market"]),
    "market_depth": ("e2e", SMALL_MARKET),
    "market_cluster": ("e2e", [*SMALL_MARKET, "--kafka-nodes", "3"]),
    # the whole market (400 symbols) with its books: ~7 minutes of REST budget to sync them, then the steady state
    "market_book": ("e2e", ["--whole-market", "--depth", "--no-disconnects", "--seconds", "720"]),
}


def run(name: str, quick: bool, out_dir: Path, extra: list[str] = (), out_name: str | None = None) -> dict:
    out = out_dir / f"{out_name or name}.json"
    script, mode = SCRIPTS.get(name, (name, []))
    cmd = [sys.executable, str(ROOT / "bench" / f"{script}.py"), "--out", str(out)] + (["--quick"] if quick else [])
    cmd += [*mode, *extra]
    print(f"==> {name}: {' '.join(cmd[1:])}", flush=True)
    started = time.monotonic()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    took = round(time.monotonic() - started, 1)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return {"benchmark": name, "failed": True, "exit_code": proc.returncode, "wall_seconds": took}
    result = json.loads(out.read_text())
    result["wall_seconds"] = took
    print(f"    done in {took:.0f} s", flush=True)
    return result


def versions() -> dict:
    from importlib.metadata import version

    kafka = sorted((ROOT / ".deps" / "kafka").glob("kafka_2.13-*.jar"))
    return {
        "cryptomon": version("cryptomon"),
        "pyspark": version("pyspark"),
        "confluent-kafka": version("confluent-kafka"),
        "psycopg": version("psycopg"),
        "kafka": kafka[0].stem.split("-", 1)[1] if kafka else None,
        "postgresql": subprocess.run(
            ["/usr/lib/postgresql/15/bin/postgres", "--version"], capture_output=True, text=True
        ).stdout.strip(),
    }


def fmt(v, unit: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float) and v < 100:
        return f"{v:g}{unit}"
    return f"{v:,.0f}{unit}" if isinstance(v, (int, float)) else f"{v}{unit}"


def render_sim(sim: dict, title: str) -> list[str]:
    x, base = sim["live"], sim["baseline_firehose"]
    got, target = x["received_per_second"], x["target_per_second"]
    lines = [
        f"## Simulator: the whole market from one process, {title}",
        "",
        f"{x['symbols']} symbols, {x['streams']:,} streams over {x['connections']} connections, "
        f"{x['seconds']:g} s; one client process counts every frame.",
        "",
        "| | trades/s | aggTrades/s | bookTickers/s | frames/s | simulator CPU (cores) | simulator RSS first / last (MiB) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| target | {target['trade']:,} | | {target['bookTicker']:,} | | | |",
        f"| simulator, live market | {fmt(got.get('trade'))} | {fmt(got.get('aggTrade'))} | {fmt(got.get('bookTicker'))} "
        f"| {fmt(x['frames_per_second'])} | {x['sim_cpu_cores']:g} | "
        f"{' / '.join(str(v) for v in x['sim_rss_mb_first_last'] or [])} |",
        f"| baseline: firehose (frames serialised beforehand, no market generation) | | | | "
        f"{fmt(base['frames_per_second'])} | | |",
        "",
        f"The live market uses {sim['live_share_of_firehose']:.0%} of what the same WebSocket fan-out carries.",
    ]
    if "sim_rss_growth_mb_q2_to_q4" in x:
        lines.append(
            f"Simulator RSS growth from the second quarter of the run to the last: "
            f"{x['sim_rss_growth_mb_q2_to_q4']:+g} MiB (bound 20 MiB)."
        )
    return [*lines, ""]


def render_ingest(ing: dict) -> list[str]:
    lines = [
        "## Ingestion: simulator → Binance client → Kafka, cryptomon against cryptofeed and a bare client",
        "",
        "The clients against the same simulator over wss://, into the same Kafka, runs interleaved (cryptomon, "
        "cryptofeed, bare, cryptomon, …); medians of the runs with min–max. msgs/s from the client's connection "
        "to the last message landing in Kafka; CPU of the client process over the same span. Each client takes "
        "the streams its Binance feed subscribes to (cryptomon: trade, aggTrade, bookTicker; cryptofeed: "
        "aggTrade, bookTicker). The bare client is the ceiling (bench/baselines/bare_ingest.py): cryptomon's "
        "streams over the same websockets library, each frame produced as received, unparsed, with cryptomon's "
        "producer settings, no delivery report asked for.",
        "",
        "| source | client | runs | messages per run | msgs/s | CPU-s per 100k msgs | msgs per CPU-second | "
        "delivered = sent |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for source, x in ing["sources"].items():
        for name in ("cryptomon", "cryptofeed", "bare"):
            if not (c := x.get(name)):
                continue
            lo, hi = c["msgs_per_cpu_second_min_max"]
            lines.append(
                f"| {source} ({', '.join(x['symbols'])}) | {name} | {len(c['runs'])} | {fmt(c['runs'][0]['sent'])} | "
                f"{fmt(c['msgs_per_second'])} | {fmt(c['cpu_s_per_100k'])} | {fmt(c['msgs_per_cpu_second'])} "
                f"({fmt(lo)}–{fmt(hi)}) | {fmt(c['delivered_equals_sent'])} |"
            )
        ratio = x["ratio"]
        lines.append(
            f"| {source} | **ratio to cryptofeed** | | | **{ratio['msgs_per_second']}×** | | "
            f"**{ratio['msgs_per_cpu_second']}×** | |"
        )
        if "cpu_per_msg_over_bare" in ratio:
            lines.append(
                f"| {source} | **CPU per message over the bare client's** | | | | "
                f"**{ratio['cpu_per_msg_over_bare']}×** | | |"
            )
    if ing.get("real_skipped"):
        lines += ["", f"Real captures: skipped, {ing['real_skipped']}."]
    settings = ing["producer_settings"]
    lines += ["", "Producer settings:", ""]
    lines += [f"- {who}: " + ", ".join(f"`{k}={v}`" for k, v in opts.items())
              for who, opts in settings.items() if who != "differences"]  # fmt: skip
    lines += [f"- differs: {d}" for d in settings["differences"]]
    return [*lines, ""]


# What the profiles showed and what was done about it (2026-11-25, 2026-11-30); the figures above are this run's.
# Spark's own figures for where a micro-batch goes (2026-12-03, local[2], bench/spark.py's preloaded topics):
# the durations Spark reports per phase and the time of each pass, before and after the job became one pass.
SPARK_FINDINGS = [
    "Where a micro-batch goes (2026-12-03, `local[2]`, Spark's own timings of each pass over 294,848 preloaded "
    "records): reading them from Kafka 2.8 s, parsing and checking them 0.6 s more, writing the parsed columns "
    "to Spark's cache 2.7 s more. Before, three queries each read and parsed their topics (the poison query both "
    "again) and kept RocksDB state; a first version of the one query cached the batch and made a pass per "
    "output (7.6 s for these records: cache 6.1, ends 0.3, trade sums 0.8, spread sums 0.4). Now one "
    "aggregation gives every output in one pass, nothing cached: 4.9 s (4.6 s without the distinct count of "
    "trade ids). With 200,000 records a batch: 5.5–6.0 s cached, 4.2–4.7 s in one pass, of which the merge's "
    "SQL 5 ms.",
    "Where the metric latency goes (the whole-market run below, 2026-12-03): Spark fires a 10 s trigger at "
    "multiples of 10 s since the epoch, so the batch that closes a window starts the instant the window ends, "
    "and a trade of the window's last moments still on its way (Binance to the simulated client, the ingestion, "
    "then Kafka's acks=all: produce p99 129 ms alone) misses it and waits for the next: the trade windows' "
    "trigger wait is p50 1 ms, p99 10,001 ms. Since 2026-12-03 the job's sink paces the batches 1 s after each "
    "multiple of the interval (`CRYPTOMON_SPARK_TRIGGER_OFFSET_SECONDS`, spark/pacing.py): the trigger wait is "
    "1.1 s at p50 and p99, metric rows p99 19.6 -> 6.3 s at the whole market.",
    "What each batch compiled (2026-12-04, Spark's CodegenMetrics): filtering a batch by the offsets counted "
    "before put those offsets into Spark's generated code as constants, so every batch compiled two new classes "
    "(Janino, then the JIT on code it had never seen). A batch that starts where the last ended is now summed "
    "without the filter, by the code generated for the first (tests/integration/test_spark_codegen.py counts "
    "the compilations); with the driver's JVM on the serial collector, a 128 MB code cache, glibc's malloc "
    "arenas at 2 and a 768 MB heap, the whole-market run went from 0.33 to 0.27 core and from 1,448 to 903 MiB "
    "peak RSS for the job (one run each, the machine varies by 20-30 %).",
]

# what made the 20,000 events/s run late and inexact, and what changed (2026-12-06, the runs of bench/e2e.py)
E2E_FINDINGS = [
    "What changed at 20,000 events/s (2026-12-06, single-rate runs, then this one): the simulator kept 100,000 "
    "trades a symbol (~20 s at this rate) while the backfill of the stall (~440,000 trades at the ingestion's "
    "half of the REST weight, 2,000 trades/s) reaches its last ids ~4 minutes later, so 365,137 were "
    "unfillable; it keeps 10 minutes of each symbol at its rate now, and none is. A trade window with a hole "
    "in its ids had its symbols' trades summed on the driver: 23 s batches after the stall, metric rows p99 "
    "40.6 s; its runs of ids from a second Spark pass: 12-16 s batches, p99 26.4 s; proven from the sums of "
    "the ids and their squares in the batch's one pass (docs/design.md): 6-7.6 s batches. The job's first "
    "batch compiled its code under the market: 20-28 s; summing 200,000 made-up records before the query "
    "starts (9.4 s while nothing waits): 12.9 s. Metric rows p99 then 6.9 and 9.5 s in single-rate runs.",
]

WORKER_FINDINGS = [
    "What the profiles showed, and what changed: psycopg's list dumper, walking every element of the batch's "
    "nine column arrays in Python, was the largest single entry (16% of the samples, 2026-11-25). The arrays now "
    "travel as PostgreSQL array literals built with `str.join` (cryptomon/worker/sink.py): on a 600,000-row "
    "drain of that day the worker went from 3.0 to 1.8 CPU-s per 100k rows and from 25,000 to 32,000 rows/s "
    "(on a slower machine: 60 ns per Python loop iteration against 32–35 here). `validate_payload` and "
    "`orjson.loads`, the largest entries since (28% together), gave way on 2026-12-02 to a typed decode in C "
    "(cryptomon/binance/records.py, msgspec: parse and validate 8.1 → 2.7 µs a row, the contract only for what "
    "it does not take). On 2026-12-03 a native profile (py-spy --native) put 13% of the main thread in CPython's "
    "cyclic collector, which the per-row objects never need (none holds a cycle): start-up is now frozen out of "
    "it and the young generation collected every 50,000 allocations (cryptomon/runtime.py), a trade's zero check "
    "is in the record's regex, rows are built without the NamedTuple's Python constructor, and commit offsets "
    "come from each partition's last position. In six interleaved drains of 1,000,000 messages each, back to "
    "back on fresh stacks, the worker's CPU went from 0.82–0.86 (median 0.84) to 0.58–0.80 (median 0.66) "
    "CPU-s per 100k rows; drains vary by ±20% here, so the single drain above is one draw. What is left is "
    "the consumer loop's calls on each confluent-kafka message (`Worker._step`), the typed decode and its "
    "regex (`decode_trade`), and turning ints into text for the array literals (`_ints`); the writers' threads "
    "(psycopg) take ~0.2 of it. The goal of 0.35–0.4 CPU-s per 100k rows is 3.5–4 µs a row for the whole "
    "process, about what the Python per-row path alone costs now (2.4 µs buffered, 0.9 µs of arrays): it "
    "needs the per-message loop out of Python, or PostgreSQL parsing the JSON (which moves the work to the "
    "database, the side COPY shows to be the limit on 2 cores).",
    "COPY first (2026-12-06, cryptomon/worker/copytext.py): PostgreSQL's own CPU for 100k of these rows, read "
    "from its backends' /proc while the same batches were written, is ~0.59 s by COPY against 0.76–0.83 s by "
    "`INSERT … SELECT FROM unnest … ON CONFLICT`; a batch now goes by COPY and falls back to the INSERT only "
    "when a row is already there (a replay). The worker's own CPU barely moves (COPY text costs 0.1–0.15 µs a "
    "row more than the arrays: figures above). Back to back on the same day, 1,000,000 messages: 121,430 rows/s (36% of a "
    "COPY ceiling of 341,327) and 0.385 CPU-s per 100k rows before; 142,165 (39% of 360,065) and 0.374, "
    "140,374 (44% of 321,865) and 0.433, 143,934 (43% of 337,721) and 0.403 after (the table above is the last). On 2 cores the ceiling keeps both busy with PostgreSQL alone "
    "(~0.55 core-s per 100k rows), so the worker's share of it is at most p / (p + w): with w = 0.37 that is "
    "~60%, and 70% needs the worker's whole process at ≤ 0.24 CPU-s per 100k rows — the 70% and 0.35 goals "
    "are one goal here, and the rest of the gap (44% against ~60%) is the pipeline's bubbles.",
    "A batch decoded whole (2026-12-07, cryptomon/worker/batch.py, bulk.py): the consumer's loop now only "
    "appends each message to its partition's batch (no per-message calls for its position, key and timestamp, "
    "no parse), and the writer's thread decodes the batch when it takes it: each value by the same typed "
    "decoder (the records out of the cyclic collector), the time checks in one comprehension, rows as plain "
    "tuples, and one regex over the batch's COPY text for every symbol and decimal (0.3 µs a row, against "
    "0.55 for a regex call per record); any record the typed decoder does not take sends the batch record by "
    "record, as before, so bad records keep their reasons. Before, the process spent 4.7 µs a row, of which "
    "2.6–3.0 µs per trade went to buffering it and rendering its COPY line (in-process timing), besides "
    "offsets read per message and a metric's labels looked up per batch. Interleaved on one stack the same evening, 1,000,000 messages each: before 0.474 and 0.487 "
    "CPU-s per 100k rows (126,496 and 127,404 rows/s), after 0.356 and 0.352 (143,188 and 155,440), the "
    "COPY ceiling at 292,860; the run above is after (with the consumer's loop looking up a batch once per "
    "run of a partition). The 70% goal is still out of reach here: 5,000-row flushes spend 0.24 CPU-s, the "
    "bound named above, and still reach only 46%.",
    "The ceiling with Kafka in (2026-12-07, bench/baselines/kafka_copy_ceiling.py): a process that consumes the "
    "same messages, COPYs the same rows rendered beforehand and commits after them, parsing nothing. With the "
    "worker's consumer settings (librdkafka's 1 MiB per partition a fetch) it reached 159,016–167,152 rows/s in "
    "six drains (2 or 4 writers, 500- or 5,000-row batches), no more than the worker's 142,521–164,992 that "
    "day; with fetches of 8 MiB a partition (its settings now) 239,120 and 241,349 at 500-row batches, 70–71% of "
    "COPY, and 305,583 at 5,000. So 70% of COPY at 500-row flushes is what a worker that parses nothing "
    "reaches on this machine, with the broker on the same two cores: the goal leaves no time to decode. The "
    "worker gains less from the larger fetches: 160,716, 162,522 (4 MiB) and 163,734 rows/s against 151,583 "
    "with its own settings in the same session, 183,111 with a third writer. What still separates it from the "
    "ceiling is its decoding (0.32 CPU-s per 100k rows against the ceiling's 0.15, on the GIL the consumer's "
    "loop also needs). The fetch size and the two writers are left as they are: the market's ~11,000 events/s "
    "is 7% of either rate, and larger fetches hold more of a lagging topic in the worker's memory.",
]


def render_worker(w: dict) -> list[str]:
    lat, copy = w["latency_2000_events_per_s"], w["ceiling_copy"]
    ours, big, spec = w["cryptomon_flush_500"], w["cryptomon_flush_5000"], w["baseline_spec_execute_values_500"]
    kc = w.get("ceiling_kafka_copy")  # runs before 2026-12-07 had none
    lines = [
        "## Worker: Kafka → TimescaleDB, against PostgreSQL's own COPY",
        "",
        f"{w['preloaded_messages']:,} messages preloaded in Kafka, drained into emptied tables; rows/s from the "
        "first to the last committed offset (every drain commits only after its insert), row count checked at "
        f"the end. The ceiling: the same rows rendered as COPY text beforehand, in batches of {copy['batch_rows']} "
        f"per partition, COPYed by {copy['connections']} connections (the worker's writers) into the same tables: "
        "no Kafka, no parsing, no conflict handling.",
        "",
        "| | rows/s | share of the COPY ceiling | CPU-s per 100k rows (the process) |",
        "| --- | --- | --- | --- |",
        f"| ceiling: COPY of ready-made batches | {fmt(copy['rows_per_second'])} | 100% | "
        f"{fmt(copy['cpu_s_per_100k_rows'])} |",
        *(
            [
                "| ceiling with Kafka in: consume, COPY of ready-made batches, commit | "
                f"{fmt(kc['rows_per_second'])} | {kc['rows_per_second'] / copy['rows_per_second']:.0%} | "
                f"{fmt(kc['cpu_s_per_100k_rows'])} |"
            ]
            if kc
            else []
        ),
        f"| cryptomon, 500-row flushes (default) | {fmt(ours['rows_per_second'])} | {w['share_of_ceiling']:.0%} | "
        f"{fmt(ours['cpu_s_per_100k_rows'])} |",
        f"| cryptomon, 5,000-row flushes | {fmt(big['rows_per_second'])} | {w['share_of_ceiling_flush_5000']:.0%} | "
        f"{fmt(big['cpu_s_per_100k_rows'])} |",
        f"| the spec's psycopg2 `execute_values`, 500 rows | {fmt(spec['rows_per_second'])} | "
        f"{spec['rows_per_second'] / copy['rows_per_second']:.0%} | {fmt(spec['cpu_s_per_100k_rows'])} |",
        "",
        *(
            [
                "The ceiling with Kafka in (bench/baselines/kafka_copy_ceiling.py) is what any worker must do on "
                "this machine: the same messages consumed from the broker, which shares the two cores, in fetches of up "
                "to 8 MiB a partition, the same rows COPYed ready-made by as many connections, whichever is free, and "
                "each partition's offsets committed after its rows; nothing parsed. Drained and timed as the worker is. cryptomon reaches "
                f"{w['share_of_kafka_copy_ceiling']:.0%} of it.",
                "",
            ]
            if kc
            else []
        ),
        f"Latency `inserted_at − ingestion_ts` at {fmt(lat['rate_measured'])} events/s: "
        f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms.",
        "",
    ]
    if spec.get("unwritten_when_all_committed"):
        lines += [
            f"The spec's design commits the consumer's position after each insert, and that position includes "
            f"messages still buffered for the other table: when every offset was committed, "
            f"{spec['unwritten_when_all_committed']:,} of its rows were not written yet (a crash then would lose "
            f"them; cryptomon commits a partition's offsets only once its rows are written, and had "
            f"{ours.get('unwritten_when_all_committed', '–')}). It is timed until it exits by itself after its last "
            "flush.",
            "",
        ]
    prof = w.get("profile") or {}
    if prof.get("own"):
        lines += [
            f"Profile of a further drain (py-spy, {prof['samples']:,} samples of the worker holding the GIL, "
            "i.e. its Python time; librdkafka's and libpq's own threads are not in it):",
            "",
            "| function (own time) | share | function (with what it calls, cryptomon's) | share |",
            "| --- | --- | --- | --- |",
        ]
        for (f1, s1), (f2, s2) in zip(prof["own"], prof["inclusive_cryptomon"], strict=False):
            lines.append(f"| `{f1}` | {s1:.0%} | `{f2}` | {s2:.0%} |")
        lines.append("")
    if us := w.get("per_row_us"):
        lines += [
            "Per trade row, timed in the benchmark's process (best of 3 over 20,000 rows): `orjson.loads` "
            f"{us['orjson_loads_us']} µs; parsed and validated into a row (`trade_row`) {us['parse_and_validate_us']} "
            f"µs; a batch of 500 decoded whole into rows and their checked COPY text (`Batch.parsed`, the worker's "
            f"path) {us['whole_batch_us']} µs; rows as COPY text alone {us['copy_text_us']} µs (as array "
            f"literals, for the INSERT: {us['array_literals_us']} µs).",
            "",
        ]
    return [*lines, *WORKER_FINDINGS, ""]


def accounting(a: dict) -> str:
    if a["exact"] or not a.get("unfillable_trade_ids"):
        return fmt(a["exact"])
    rest = "every other event once" if a.get("stored_plus_unfillable_equals_generated") else "**and others missing**"
    return (
        f"**no**: {a['unfillable_trade_ids']:,} trade ids unfillable (gone from the exchange's history before the "
        f"rate-limited backfill reached them, each reported by the ingestion); {rest}"
    )


def goal_lines(result: dict) -> list[str]:
    """The benchmark's goals under its tables: met or not."""
    goals = [(g, met) for g, met in (result.get("goals") or {}).items() if met is not None]
    if not goals:
        return []
    return ["Goals: " + "; ".join(f"`{g}` {'met' if met else '**not met**'}" for g, met in goals) + ".", ""]


def secs(ms) -> str:
    return "–" if ms is None else f"{ms / 1000:.1f} s"


def render_breakdown(runs: list[dict]) -> list[str]:
    """Where the metric latency goes: trigger wait and batch, and Spark's batch durations, per run."""
    rows = []
    for x in runs:
        b = x.get("metric_latency_breakdown") or {}
        for table in ("trade_metrics", "spread_metrics"):
            if t := b.get(table):
                # one query per table before the job read both topics once (2026-12-03), one query since
                q = b.get("batches", {}).get(table) or b.get("batches", {}).get("metrics", {})
                rows.append(
                    f"| {x.get('load') or x['target_events_per_second']} | `{table}` | {t['windows']} | "
                    f"{secs(t['trigger_wait_p50_ms'])} / {secs(t['trigger_wait_p99_ms'])} | "
                    f"{secs(t['batch_p50_ms'])} / {secs(t['batch_p99_ms'])} | {q.get('n', '–')} | "
                    f"{secs(q.get('duration_p50_ms'))} / {secs(q.get('duration_max_ms'))} | "
                    f"{fmt(q.get('input_rows_p50'))} |"
                )
    if not rows:
        return []
    return [
        "Where a metric row's time after its window closed goes: from the window's end to the trigger of the "
        "micro-batch that wrote its last value (the trigger interval is 10 s; more when batches run late), then "
        "that batch, until the row is written. Spark's batches of the run beside it:",
        "",
        "| run | query | windows | trigger wait p50 / p99 | batch until written p50 / p99 | batches | "
        "batch duration p50 / max | input rows per batch (p50) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]


def process_table(x: dict) -> list[str]:
    """CPU and peak RSS per process tree of a run, one column each."""
    return [
        "| process tree | " + " | ".join(x["cpu_cores"]) + " |",
        "| --- |" + " --- |" * len(x["cpu_cores"]),
        "| CPU (cores) | " + " | ".join(f"{v:g}" for v in x["cpu_cores"].values()) + " |",
        "| peak RSS (MiB) | " + " | ".join(str(v) for v in x["peak_rss_mb"].values()) + " |",
        "",
    ]


def render_market(m: dict) -> list[str]:
    x = m["runs"][0]
    raw, met, acc, rep = x["raw_row_latency"], x["metric_after_window_close"], x["accounting"], x.get("repair") or {}
    drops = ", ".join(f"{d['connections']} connections at {d['at_s']} s" for d in x.get("disconnects") or [])
    lines = [
        "## The whole market end to end: simulator → ingestion → Kafka → worker → TimescaleDB, and → Spark",
        "",
        f"{x['load']}: Binance's whole spot market as the simulator plays it (≈2,000 trades/s, 1,250 aggTrades/s, "
        f"8,000 bookTickers/s), followed as `CRYPTOMON_SYMBOLS=*USDT`, for {x['seconds']:g} s; every connection "
        f"dropped twice ({drops}); gaps backfilled within Binance's REST limits (the ingestion's budget: 3,000 "
        "weight a minute), then the market goes on until every event is stored and every window with backfilled "
        "trades equals its raw rows. Late window latency: from its last backfilled row landing (or its close, if "
        "it was still open then) to the update that made it equal to its raw rows.",
        "",
        "| events/s measured | symbols stored | raw row p50 / p99 | metric after window close p50 / p99 | "
        "windows with backfilled trades / repaired, late window p99 | every event stored once |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {fmt(x['measured_events_per_second'])} | {x.get('symbols_stored', '–')} | {fmt(raw['p50_ms'], ' ms')} / "
        f"{fmt(raw['p99_ms'], ' ms')} | {fmt(met['p50_ms'] and round(met['p50_ms'] / 1000, 1), ' s')} / "
        f"{fmt(met['p99_ms'] and round(met['p99_ms'] / 1000, 1), ' s')} ({met['n']} windows) | "
        f"{rep.get('backfilled_windows', '–')} / {rep.get('repaired_windows', 'merged')}, "
        f"{fmt(rep.get('p99_ms') and round(rep['p99_ms'] / 1000, 1), ' s')} | {accounting(acc)} ({acc['stored']}) |",
        "",
        *process_table(x),
        *render_breakdown(m["runs"]),
    ]
    return lines


def render_cluster(single: dict, cluster: dict) -> list[str]:
    """The same whole-market run on one broker and on three replicating nodes, side by side."""
    runs = [(f"{x['kafka_nodes']} node{'s' if x['kafka_nodes'] > 1 else ''}", x)
            for x in (single["runs"][0], cluster["runs"][0]) if "kafka_nodes" in x]  # fmt: skip
    if len(runs) < 2:
        return []

    def ms(v: dict | None, key: str) -> str:
        return fmt((v or {}).get(key), " ms")

    rows = [
        f"| {name} | {fmt(x['measured_events_per_second'])} | {ms(x['produce_latency'], 'p50_ms')} / "
        f"{ms(x['produce_latency'], 'p99_ms')} | {ms(x['raw_row_latency'], 'p50_ms')} / "
        f"{ms(x['raw_row_latency'], 'p99_ms')} | {secs(x['metric_after_window_close']['p99_ms'])} | "
        f"{x['kafka']['cpu_cores']:g} | {sum(x['kafka']['disk_mb'].values()):,.0f} MiB "
        f"({x['kafka']['disk_bytes_per_event']:g} B/event) | {accounting(x['accounting'])} |"
        for name, x in runs
    ]
    (_, one), (_, three) = runs
    return [
        "## The whole market on a three-node Kafka cluster",
        "",
        f"{one['load']} for {one['seconds']:g} s with the same two forced disconnects "
        "and the order book on (`bench/run --only market_depth,market_cluster`), once on one broker and once on three KRaft nodes on "
        "this machine, every topic with 3 replicas and min.insync.replicas 2, so that an acknowledged write is "
        "on two disks at least. Produce latency is the ingestion's produce() to the acks=all acknowledgement, "
        "over every delivery of the run.",
        "",
        "| Kafka | events/s | produce p50 / p99 | raw row p50 / p99 | metric p99 after window close | "
        "Kafka CPU (cores, all nodes) | Kafka disk after the run | every event stored once |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Replication costs {three['kafka']['cpu_cores'] / max(one['kafka']['cpu_cores'], 0.01):.1f}× the Kafka CPU "
        f"and {three['kafka']['disk_bytes_per_event'] / max(one['kafka']['disk_bytes_per_event'], 0.1):.1f}× "
        "the disk per event; all three nodes share this machine's two cores and one disk, so on three machines each "
        "node's share is what one node costs here, plus the replication traffic.",
        "",
    ]


def render_depth(m: dict, name: str = "market_depth", title: str = "The whole market with the order book") -> list[str]:
    """The whole market with the order book on: the book stage's cost and latency, the books' start."""
    x = m["runs"][0]
    b = x.get("book")
    if not b:
        return []
    lat = b["row_latency"]
    return [
        f"## {title}",
        "",
        f"{x['load']} for {x['seconds']:g} s with `CRYPTOMON_DEPTH=100ms` (`bench/run --only {name}`): every "
        "symbol's `@depth@100ms` on its connection, `binance.depth`, and `cryptomon book` writing "
        "`order_book_snapshots`. Row latency is "
        "the last diff of a second (its event time) to its row written; the books' start is the time from "
        "the ingestion's start until every book synced.",
        "",
        "| book stage CPU (cores) | book stage peak RSS | row latency p50 / p99 | diffs sent / in Kafka | "
        "books synced after | snapshot weight then | 429s | bookTicker checks / mismatches | resyncs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {x['cpu_cores'].get('book', 0):g} | {x['peak_rss_mb'].get('book', 0)} MiB | {fmt(lat['p50_ms'], ' ms')} / "
        f"{fmt(lat['p99_ms'], ' ms')} | {b['diffs_sent_by_exchange']:,} / {b['diffs_produced']:,} | "
        f"{fmt(b['books_synced_after_s'], ' s')} | {fmt(b['snapshot_weight_at_sync'])} | {fmt(b['rate_limited_429'])} | "
        f"{b['checks']:,} / {fmt(b['mismatches'])} | {fmt(b['resyncs'])} |",
        "",
        *process_table(x),
    ]


def render_book(b: dict) -> list[str]:
    """The book stage's work per diff against cryptofeed's Binance book, on the same records."""
    lines = [
        "## The order book: the book stage's work per diff, against cryptofeed",
        "",
        "`bench/book.py`: the same depth records through `BookKeeper` (the book stage without Kafka and the "
        "database: parsing, validation, Binance's sync, the bookTicker check, a row a second with its bands) and "
        "through cryptofeed's own Binance depth handler (`_book`, its books in the `order_book` C extension, a "
        "no-op callback: no row, no check, no bands). CPU per diff in one process, one after the other; the "
        "cores at 4,000 diffs/s are the whole market's (400 books, most changing every 100 ms).",
        "",
        "| records | diffs | cryptomon, every record | cryptomon, depth only | cryptofeed | depth only ÷ "
        "cryptofeed | cores at 4,000 diffs/s (cryptomon / cryptofeed) | books equal | bookTicker checks / "
        "mismatches |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key in ("market", "real"):
        if not (x := b.get(key)):
            continue
        rec, mine, peer = x["records"], x["cryptomon_every_record"], x["cryptofeed_book"]
        depth = x["cryptomon_depth_only"]
        equal = x["books_equal_to_cryptofeed"]
        lines.append(
            f"| {rec['name']} ({rec['seconds']:g} s) | {rec['diffs']:,} | {mine['us_per_diff']} µs | "
            f"{depth['us_per_diff']} µs | {peer['us_per_diff']} µs | {x['depth_only_to_cryptofeed']}× | "
            f"{mine['cores_at_4000_diffs_per_second']} / {peer['cores_at_4000_diffs_per_second']} | "
            f"{equal['agree']} of {rec['symbols']} | {mine['bookticker_checks']:,} / {mine['bookticker_mismatches']} |"
        )
    return [*lines, ""]


def render(report: dict) -> str:
    r = report["results"]
    m = report["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `bench/run{' --quick' if report['quick'] else ''}` on {report['finished']} "
        f"({'quick' if report['quick'] else 'full'} settings); raw figures in "
        f"[`bench/results/{report['file']}`](../bench/results/{report['file']}). Every benchmark measures its "
        "baseline in the same run, on a Kafka + TimescaleDB of its own; they run one after the other.",
        "",
        f"Machine: {m.get('cpus')} cores, {m.get('platform')}; Python {m.get('python')}"
        + (f" ({m['python_loop_ns']} ns per plain Python loop iteration)" if m.get("python_loop_ns") else "")
        + "; "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v),
        "",
    ]
    if (sim := r.get("sim")) and not sim.get("failed"):
        lines += render_sim(sim, "`cryptomon feed sim --market whole`")
    if (sim_soak := report.get("sim_soak")) and not sim_soak.get("failed"):
        lines += render_sim(sim_soak, f"`bench/run --sim-soak` ({sim_soak.get('finished')})")
    if (ing := r.get("ingest")) and not ing.get("failed") and "sources" in ing:
        lines += render_ingest(ing) + goal_lines(ing)
    if (w := r.get("worker")) and not w.get("failed") and "ceiling_copy" in w:
        lines += render_worker(w) + goal_lines(w)
    if (sp := r.get("spark")) and not sp.get("failed"):
        lines += [
            "## Spark Structured Streaming",
            "",
            f"Micro-batches of {sp['trigger_seconds']:g} s of input at each rate, back to back; a rate is sustained "
            "when every batch ends within the trigger.",
            "",
            "| events/s | batches | median batch | slowest batch | sustained |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {x['rate']:,} | {x['batches']} | {fmt(x['p50_s'], ' s')} | {fmt(x['p99_s'], ' s')} | {fmt(x['sustained'])} |"
            for x in sp["results"]
        ]
        lines += ["", f"Highest sustained: **{sp['highest_sustained_events_per_second']:,} events/s**.", "",
                  *SPARK_FINDINGS, ""]  # fmt: skip
        lines += goal_lines(sp)
    if (e := r.get("e2e")) and not e.get("failed"):
        lines += [
            "## End to end: simulator → ingestion → Kafka → worker → TimescaleDB, and → Spark → metrics",
            "",
            f"Per rate, {e['runs'][0]['seconds']:.0f} s of market with a 30 s stall a quarter of the way through. "
            "Offered: what the simulator "
            "had to deliver per second (a stall sends no bookTickers); measured: rows ingested per second in the "
            "run. Metric latency over the windows that closed while data flowed, leaving out those the stall "
            "overlapped and the trade windows with backfilled trades (measured apart, below).",
            "",
            "| target events/s | offered | measured | raw row p50 / p99 | metric after window close p50 / p99 | "
            "lag max / mean | every event stored once | goal |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for x in e["runs"]:
            raw, met, lag = x["raw_row_latency"], x["metric_after_window_close"], x["consumer_lag"]
            lines.append(
                f"| {x['target_events_per_second']:,} | {fmt(x.get('offered_events_per_second'))} | "
                f"{fmt(x['measured_events_per_second'])} | "
                f"{fmt(raw['p50_ms'], ' ms')} / {fmt(raw['p99_ms'], ' ms')} | "
                f"{fmt(met['p50_ms'] and round(met['p50_ms'] / 1000, 1), ' s')} / "
                f"{fmt(met['p99_ms'] and round(met['p99_ms'] / 1000, 1), ' s')} "
                f"({met['n']} windows) | {fmt(lag['max'])} / {fmt(lag['mean'])} | {accounting(x['accounting'])} | "
                f"{fmt(x['goal_met'])} |"
            )
        lines += [
            "",
            "CPU (cores) and peak RSS (MiB) per process tree:",
            "",
            "| events/s | " + " | ".join(e["runs"][0]["cpu_cores"]) + " |",
            "| --- |" + " --- |" * len(e["runs"][0]["cpu_cores"]),
        ]
        for x in e["runs"]:
            lines.append(
                f"| {x['target_events_per_second']:,} | "
                + " | ".join(f"{x['cpu_cores'][n]:g} / {x['peak_rss_mb'][n]}" for n in x["cpu_cores"])
                + " |"
            )
        lines.append("")
        lines += render_breakdown(e["runs"])
        repairs = [
            f"Late data at {x['target_events_per_second']:,} events/s: a {x['stall_seconds']} s stall a quarter of "
            f"the way through, REST answers slowed {x.get('rest_delay_seconds', 20)} s for the next 50 s; "
            f"{rep['backfilled_windows']} windows got backfilled trades, "
            + (
                f"the repair loop changed {rep['repaired_windows']}"
                if "repaired_windows" in rep
                else "merged into them by the next micro-batches"
            )
            + "; last backfilled row landed (or the window closed, if later) → window equal to its raw rows: p50 "
            f"{fmt(rep['p50_ms'] and round(rep['p50_ms'] / 1000, 1), ' s')} / p99 "
            f"{fmt(rep['p99_ms'] and round(rep['p99_ms'] / 1000, 1), ' s')} ({rep['n']} windows)."
            for x in e["runs"]
            if (rep := x.get("repair"))
        ]
        if repairs:
            lines += [*repairs, ""]
        lines += [*E2E_FINDINGS, ""]
        for x in e["runs"]:
            if "rss_growth_mb" in x:
                lines.append(
                    f"Memory trend at {x['target_events_per_second']:,} events/s over {x['seconds']:g} s (last "
                    "quarter against the second, MiB): "
                    + ", ".join(f"{n} {g:+g}" for n, g in x["rss_growth_mb"].items())
                    + f"; consumer lag trend {fmt(x.get('lag_trend'))}."
                )
        lines.append("")
        lines += goal_lines(e)
    if (mk := r.get("market")) and not mk.get("failed"):
        lines += render_market(mk) + goal_lines(mk)
    one, mc = r.get("market_depth"), r.get("market_cluster")
    if one and not one.get("failed"):
        lines += render_depth(one) + goal_lines(one)
    if one and mc and not one.get("failed") and not mc.get("failed"):
        lines += render_cluster(one, mc) + goal_lines(mc)
    if (book := r.get("book")) and not book.get("failed"):
        lines += render_book(book) + goal_lines(book)
    if (whole := r.get("market_book")) and not whole.get("failed"):
        lines += render_depth(whole, "market_book", "The whole market (400 symbols) with every book") + goal_lines(
            whole
        )
    soak = report.get("soak")
    if soak and not soak.get("failed"):
        x = soak["runs"][0]
        raw, lag = x["raw_row_latency"], x["consumer_lag"]
        lines += [
            "## Soak",
            "",
            f"`bench/run --soak` ({soak['finished']}): {x['target_events_per_second']:,} events/s for "
            f"{x['seconds'] / 60:.0f} minutes, memory sampled every 10 s; measured "
            f"{fmt(x['measured_events_per_second'])} events/s, raw rows p50 {fmt(raw['p50_ms'], ' ms')} / "
            f"p99 {fmt(raw['p99_ms'], ' ms')}, consumer lag max {fmt(lag['max'])} / mean {fmt(lag['mean'])}.",
            "",
            "| process tree | CPU (cores) | peak RSS (MiB) | RSS growth, last quarter vs. second (MiB) | bound (MiB) |",
            "| --- | --- | --- | --- | --- |",
        ]
        bounds = soak.get("rss_bounds_mb", {})
        lines += [
            f"| {n} | {x['cpu_cores'][n]:g} | {x['peak_rss_mb'][n]} | {x['rss_growth_mb'][n]:+g} | "
            f"{bounds.get(n, 'none')} |"
            for n in x["cpu_cores"]
        ]
        lines += ["", " ".join(soak[k] + "." for k in ("rss_bounds_note", "goals_reevaluated") if soak.get(k))]
        lines += [
            "",
            f"Consumer lag trend (last quarter vs. second): {fmt(x['lag_trend'])}; every event stored "
            f"exactly once: {fmt(x['accounting']['exact'])} ({x['accounting']['stored']}).",
            "",
        ]
    if (ms := report.get("market_soak")) and not ms.get("failed"):
        lines += render_market_soak(ms)
    lines += ["## Goals", "", "| benchmark | goal | met |", "| --- | --- | --- |"]
    for name in BENCHMARKS:
        for goal, met in (r.get(name) or {}).get("goals", {}).items():
            lines.append(f"| {name} | `{goal}` | {fmt(met)} |")
    for goal, met in ((soak or {}).get("goals") or {}).items():
        if goal.startswith("soak"):
            lines.append(f"| soak | `{goal}` | {fmt(met)} |")
    for goal, met in ((report.get("sim_soak") or {}).get("goals") or {}).items():
        lines.append(f"| sim soak | `{goal}` | {fmt(met)} |")
    for goal, met in ((report.get("market_soak") or {}).get("goals") or {}).items():
        lines.append(f"| market soak | `{goal}` | {fmt(met)} |")
    failed = [n for n, x in r.items() if x.get("failed")]
    if failed:
        lines += ["", f"Failed to run: {', '.join(failed)} (see the harness output)."]
    return "\n".join(lines) + "\n"


def quarters(series: list[float]) -> list[float]:
    """A series' value at the end of each quarter of it (fewer than 4 values: none)."""
    n = len(series)
    return [series[max(0, n * q // 4 - 1)] for q in range(1, 5)] if n >= 4 else []


def render_market_soak(ms: dict) -> list[str]:
    """The whole market for an hour with retention of minutes: memory slopes, disk, the archive's accounting."""
    x = ms["runs"][0]
    raw, acc, arch = x["raw_row_latency"], x["accounting"], x["archive"] or {}
    lines = [
        "## Market soak: weeks in an hour",
        "",
        f"`bench/run --market-soak` ({ms['finished']}): {x['load']}, {x['seconds'] / 60:.0f} minutes at "
        f"{fmt(x['offered_events_per_second'])} events/s offered (the database keeps only the last minutes: most rows "
        "were archived and dropped), every connection cut every "
        f"{x['disconnects'][0]['at_s'] if x['disconnects'] else '–'} s ({len(x['disconnects'] or [])} times); raw tables "
        "in chunks of 2 minutes kept 10 minutes, so `cryptomon retention` (a pass every 30 s) archives and drops "
        f"chunks all along. Raw rows p50 {fmt(raw['p50_ms'], ' ms')} / p99 {fmt(raw['p99_ms'], ' ms')}. "
        "Memory sampled every 10 s; its slope is a least-squares fit over the last three quarters"
        + (
            ", of the processes of a tree that had lived a minute (a retention pass's child, seconds long, is in "
            "the peak only); a tree's CPU counts its children that have ended."
            if x.get("rss_trend_settled_after_s")
            else "."
        ),
        "",
        "| process tree | CPU (cores) | peak RSS (MiB) | RSS slope (MiB/h) | RSS at each quarter's end (MiB) |",
        "| --- | --- | --- | --- | --- |",
    ]
    minutes = x.get("rss_mib_per_minute") or {}
    lines += [
        f"| {n} | {x['cpu_cores'][n]:g} | {x['peak_rss_mb'][n]} | {fmt(x['rss_slope_mib_per_hour'].get(n))} | "
        f"{' / '.join(f'{v:,.0f}' for v in quarters(minutes.get(n) or [])) or '–'} |"
        for n in x["cpu_cores"]
    ]
    lines += [
        "",
        "| disk | start (MiB) | end (MiB) | most (MiB) | second half (MiB/h, least squares) |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {n} | {d['start_mib']:g} | {d['end_mib']:g} | {d['max_mib']:g} | {d['second_half_mib_per_hour']:+g} |"
        for n, d in (x["disk"] or {}).items()
    ]
    keys = "; ".join(
        f"{t}: {k['events']:,} events, {k['distinct']:,} distinct" for t, k in arch.get("keys", {}).items()
    )
    lines += [
        "",
        f"Chunks archived and dropped: {arch.get('chunks_dropped')}; {arch.get('files')} files, "
        f"{len(arch.get('files_bad', []))} that did not verify; rows in the files {arch.get('rows_in_files')} = "
        f"rows of the dropped chunks: {fmt(arch.get('rows_in_files_equal_logged'))}. Every event generated is in the "
        f"database or the archive: {fmt(acc['exact'])} (generated {acc['generated']}, stored or archived "
        f"{acc['stored']}); once: {keys}. Dead letters (topic, reason): "
        f"{', '.join(f'{k} {v:,}' for k, v in acc['dead_letters'].items()) or 'none' if 'dead_letters' in acc else 'not recorded'}.",
        "",
    ]
    if cuts := x.get("backfill_after_cuts"):
        lines[-2] += (
            " After each cut of the connections the ingestion backfilled "
            f"{' / '.join(str(c['gaps']) for c in cuts)} gaps, the last begun "
            f"{' / '.join(fmt(c['last_fill_began_after_s'], ' s') for c in cuts)} after the cut (REST weight bound: "
            "a trade gap costs 25, an aggTrade gap 4, of 3,000 a minute); a row that arrives older than the "
            "retention's 10 minutes is set aside as `before_archive_horizon`."
        )
    metric = x["metric_after_window_close"]
    lines += [
        f"Metric rows after their window closed: p50 {fmt(metric['p50_ms'], ' ms')} / p99 {fmt(metric['p99_ms'], ' ms')}."
    ]
    if book := x.get("book"):
        rows = book["row_latency"]
        lines[-1] += (
            f" The order book's streams on: {book['diffs_sent_by_exchange']:,} diffs sent, {book['diffs_produced']:,} in "
            f"Kafka; every book synced {fmt(book['books_synced_after_s'], ' s')} after the start ({fmt(book['snapshot_weight_at_sync'])} "
            f"of snapshot weight, {book['rate_limited_429']} answers 429); {book['resyncs']} resyncs; book rows p50 "
            f"{fmt(rows['p50_ms'], ' ms')} / p99 {fmt(rows['p99_ms'], ' ms')} after their second; bookTicker checks "
            f"{book['checks']:,}, mismatches {book['mismatches']}."
        )
    return [*lines, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="CI-smoke sizes: minutes instead of tens of minutes")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    ap.add_argument("--soak", action="store_true", help="only the soak run (30 min at 2,000 events/s)")
    ap.add_argument("--sim-soak", action="store_true", help="only the simulator's soak (30 min, whole market)")
    ap.add_argument("--market-soak", action="store_true",
                    help="only the market soak (the whole market for an hour, retention of minutes)")  # fmt: skip
    ap.add_argument("--soak-args", default="", help="more arguments of the soak run (e.g. '--seconds 2400')")
    ap.add_argument("--collect", action="store_true",
                    help="run nothing: take the --only benchmarks' last results (bench/results/full/<name>.json)")  # fmt: skip
    ap.add_argument("--report", type=Path, help="default: docs/benchmarks.md (full), bench/results/quick.md (quick)")
    args = ap.parse_args()
    args.report = args.report or (
        ROOT / "bench" / "results" / "quick.md" if args.quick else ROOT / "docs" / "benchmarks.md"
    )
    names = args.only.split(",") if args.only else [b for b in BENCHMARKS if b not in OPT_IN]
    out_dir = ROOT / "bench" / "results"
    work = out_dir / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "bench"))
    from common import machine

    if args.soak or args.sim_soak or args.market_soak:
        name, key, flag = (
            ("e2e", "soak", "--soak")
            if args.soak
            else ("e2e", "market_soak", "--market-soak")
            if args.market_soak
            else ("sim", "sim_soak", "--soak")
        )
        soak = run(name, False, work, extra=[flag, *args.soak_args.split()], out_name=key)
        soak["finished"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        (out_dir / f"{key}.json").write_text(json.dumps(soak, indent=2, default=str) + "\n")
        report = json.loads((out_dir / "full.json").read_text())
        report[key] = soak
        args.report.write_text(render(report))
        print(f"wrote {out_dir / f'{key}.json'} and {args.report}")
        sys.exit(1 if soak.get("failed") else 0)
    if args.collect:
        results = {name: json.loads((work / f"{name}.json").read_text()) for name in names}
    else:
        results = {name: run(name, args.quick, work) for name in names}
    previous = out_dir / f"{'quick' if args.quick else 'full'}.json"
    if args.only and previous.exists():  # a partial run updates the last full report
        results = {**json.loads(previous.read_text())["results"], **results}
        results = {name: results[name] for name in BENCHMARKS if name in results}
    report = {
        "quick": args.quick,
        "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(),
        "results": results,
        "file": f"{'quick' if args.quick else 'full'}.json",
    }
    for key in SOAKS:
        if not args.quick and (out_dir / f"{key}.json").exists():
            report[key] = json.loads((out_dir / f"{key}.json").read_text())
    (out_dir / report["file"]).write_text(json.dumps(report, indent=2, default=str) + "\n")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(render(report))
    print(f"wrote {out_dir / report['file']} and {args.report}")
    sys.exit(1 if any(x.get("failed") for x in results.values()) else 0)


if __name__ == "__main__":
    main()
