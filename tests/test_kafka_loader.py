"""`floe run` against a Kafka-protocol broker in another process (`floe dev-broker`):
exactly-once loading, dead letters, crashes, rebalances, shutdown."""

import os
import random
import signal
import time
import urllib.request
from collections import Counter
from datetime import timezone

import pytest

from conftest import free_port
from oracle import expected_row

START_MS = 1_763_000_000_000
COLUMNS = ["event_guid", "event_ts", "country", "is_returning", "user_id", "action",
           "device_type", "page", "category", "value", "session_duration"]


def generated(lake, tmp_path, n, seed, malformed=0.0, duplicates=0.0):
    """The exact messages `floe generate` sends for these settings (same seed, same stream)."""
    out = tmp_path / f"gen-{seed}.jsonl"
    lake.run("generate", "--events", n, "--seed", seed, "--malformed", malformed,
             "--duplicates", duplicates, "--start-ms", START_MS, "--output", out)
    return out.read_bytes().split(b"\n")[:-1]


def produce(lake, brokers, n, seed, malformed=0.0, duplicates=0.0, topic="events"):
    lake.run("generate", "--brokers", brokers, "--topic", topic, "--events", n, "--seed", seed,
             "--malformed", malformed, "--duplicates", duplicates, "--start-ms", START_MS)


def prepared(lake, brokers, tmp_path, n, seed, malformed=0.0):
    """Tables created and `n` generated messages produced; returns the exact messages sent."""
    payloads = generated(lake, tmp_path, n, seed=seed, malformed=malformed)
    lake.run("table", "create", "--all")
    produce(lake, brokers, n, seed=seed, malformed=malformed)
    return payloads


def split(payloads):
    good = [expected_row(p) for p in payloads]
    return [g for g in good if g], [p for p, g in zip(payloads, good) if g is None]


def table_rows(lake):
    rows = lake.read_pyiceberg("lake.events").select(COLUMNS).to_pylist()
    for r in rows:
        r["event_ts"] = r["event_ts"].astimezone(timezone.utc)
    return rows


def key(row):
    return tuple(row[c] for c in COLUMNS)


def assert_exactly(lake, payloads):
    """The table holds each valid message once, the dead-letter table each invalid one."""
    good, bad = split(payloads)
    rows = table_rows(lake)
    assert Counter(map(key, rows)) == Counter(map(key, good)), \
        f"{len(rows)} rows for {len(good)} valid messages"
    dead = lake.read_pyiceberg("lake.events_dead_letters").column("payload").to_pylist()
    assert Counter(dead) == Counter(bad)
    assert len(rows) + len(dead) == len(payloads)
    return good, bad


def kill_at_random_moments(lake, args, times, low, high, seed):
    """Starts `floe <args>` and SIGKILLs it after a random while, `times` times over."""
    rng = random.Random(seed)
    for _ in range(times):
        p = lake.popen(*args)
        time.sleep(rng.uniform(low, high))
        p.send_signal(signal.SIGKILL)
        p.wait()


def run_args(brokers, *extra):
    return ["run", "--brokers", brokers, "--topic", "events", "--table", "lake.events",
            "--group", "g", *extra]


def test_events_load_exactly_once_with_dead_letters_in_table_and_topic(catalog_lake, dev_broker, tmp_path):
    lake = catalog_lake
    payloads = prepared(lake, dev_broker, tmp_path, 20_000, seed=11, malformed=0.03)
    out = lake.run(*run_args(dev_broker, "--flush-interval", "1s", "--until-drained"), timeout=120).stdout
    assert "20000 messages" in out, out
    good, bad = assert_exactly(lake, payloads)
    assert len(bad) > 300

    d = lake.read_duckdb("lake.events", "SELECT count(*) AS n, count(DISTINCT event_guid) AS g FROM t")
    assert d.column("n")[0].as_py() == len(good)

    # Ingestion columns carry the Kafka coordinates: (partition, offset) is unique.
    t = lake.read_pyiceberg("lake.events")
    coords = list(zip(t.column("_kafka_partition").to_pylist(), t.column("_kafka_offset").to_pylist()))
    assert len(set(coords)) == len(coords) and None not in {c[0] for c in coords}

    # The dead-letter topic holds exactly the rejected messages, with their reasons.
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": dev_broker, "group.id": "check", "auto.offset.reset": "earliest",
                  "enable.partition.eof": False})
    c.subscribe(["events.dead-letters"])
    got, deadline = [], time.time() + 30
    while len(got) < len(bad) and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append(m)
    c.close()
    assert Counter(m.value() for m in got) == Counter(bad)
    headers = dict(got[0].headers())
    assert {"floe.error.kind", "floe.error.message", "floe.source.topic",
            "floe.source.partition", "floe.source.offset"} <= set(headers)


@pytest.mark.parametrize("failpoint", ["decode@5000", "after-data-files@2",
                                       "after-table-commit@2", "before-kafka-commit@2"])
def test_a_crash_at_any_point_then_restart_loses_and_duplicates_nothing(catalog_lake, dev_broker, tmp_path, failpoint):
    lake = catalog_lake
    payloads = prepared(lake, dev_broker, tmp_path, 15_000, seed=21, malformed=0.02)
    args = run_args(dev_broker, "--max-rows", "1500", "--flush-interval", "500ms", "--until-drained")
    crashed = lake.popen(*args, env={"FLOE_FAILPOINTS": failpoint})
    _, err = crashed.communicate(timeout=120)
    assert crashed.returncode != 0 and f"failpoint {failpoint.split('@')[0]}" in err, err
    lake.run(*args, timeout=120)
    assert_exactly(lake, payloads)


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(catalog_lake, dev_broker, tmp_path):
    lake = catalog_lake
    payloads = prepared(lake, dev_broker, tmp_path, 30_000, seed=31, malformed=0.01)
    args = run_args(dev_broker, "--max-rows", "700", "--flush-interval", "200ms")
    kill_at_random_moments(lake, args, times=4, low=1.0, high=4.0, seed=5)
    lake.run(*args, "--until-drained", timeout=180)
    assert_exactly(lake, payloads)


def test_loaders_in_one_group_share_partitions_and_survive_one_leaving(catalog_lake, dev_broker, tmp_path):
    lake = catalog_lake
    payloads = prepared(lake, dev_broker, tmp_path, 40_000, seed=41, malformed=0.01)
    args = run_args(dev_broker, "--max-rows", "2000", "--flush-interval", "300ms")
    procs = [lake.popen(*args) for _ in range(3)]
    time.sleep(6)
    procs[0].send_signal(signal.SIGKILL)  # one leaves abruptly mid-stream
    procs[0].wait()
    good, bad = split(payloads)
    deadline = time.time() + 120
    while time.time() < deadline:
        tbl = lake.pyiceberg_table("lake.events")
        snap = tbl.current_snapshot()
        if snap and int(snap.summary.get("total-records", 0)) >= len(good):
            break
        time.sleep(1)
    time.sleep(2)
    for p in procs[1:]:
        p.send_signal(signal.SIGTERM)
    for p in procs[1:]:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    assert_exactly(lake, payloads)
    writers = {s.summary.get("floe.writer")
               for s in lake.pyiceberg_table("lake.events").snapshots()}
    assert len(writers) >= 2, writers


def messages_received(port, expect, proc, timeout=90):
    """The loader's count of received messages (its /metrics on `port`) once it reaches
    `expect`, or when `timeout` seconds pass or `proc` exits."""
    received, deadline = 0, time.time() + timeout
    while received < expect and time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        except OSError:
            continue
        received = sum(float(l.split()[-1]) for l in text.splitlines()
                       if l.startswith("floe_messages_received_total"))
    return received


def test_sigterm_commits_what_was_consumed_and_exits_zero(catalog_lake, dev_broker, tmp_path):
    lake = catalog_lake
    payloads = prepared(lake, dev_broker, tmp_path, 5_000, seed=51)
    port = free_port()
    p = lake.popen(*run_args(dev_broker, "--flush-interval", "1h"),
                   env={"FLOE__METRICS__LISTEN": f"127.0.0.1:{port}"})
    assert messages_received(port, 5_000, p) == 5_000
    assert lake.read_pyiceberg("lake.events").num_rows == 0  # nothing committed yet
    health = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read().decode()
    assert health.startswith("ok")
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert_exactly(lake, payloads)


def test_without_dead_letters_the_loader_stops_at_the_first_bad_message(catalog_lake, dev_broker, tmp_path):
    from confluent_kafka import Producer
    lake = catalog_lake
    lake.run("table", "create", "--all")
    payloads = generated(lake, tmp_path, 300, seed=61)
    prod = Producer({"bootstrap.servers": dev_broker})
    for i, pl in enumerate(payloads[:100] + [b'{"eventGuid": "x", "timestamp": "later"}'] + payloads[100:]):
        prod.produce("events", value=pl, partition=0)
    prod.flush(30)
    p = lake.run(*run_args(dev_broker, "--no-dead-letters", "--until-drained"), check=False, timeout=120)
    assert p.returncode != 0
    assert "events[0]@100" in p.stderr and 'field "event_ts"' in p.stderr, p.stderr
    rows = table_rows(lake)
    assert Counter(map(key, rows)) == Counter(map(key, [expected_row(x) for x in payloads[:100]]))
