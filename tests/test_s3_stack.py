"""The production stack on this machine: warehouse on a real S3 server (moto_server), catalog
on a real PostgreSQL server, Kafka-protocol broker in another process. Generate → run → read
back with PyIceberg and DuckDB over S3; S3 outages mid-run; maintenance listing S3."""

import signal
import time

import pytest

from readers import s3_client
from test_kafka_loader import assert_exactly, generated, prepared, produce, run_args, split


def test_loader_end_to_end_on_s3_with_a_postgres_catalog(s3_lake, dev_broker, tmp_path):
    lake = s3_lake
    lake.extra_env["FLOE__LOG__LEVEL"] = "debug"
    payloads = prepared(lake, dev_broker, tmp_path, 12_000, seed=71, malformed=0.02)
    p = lake.run(*run_args(dev_broker, "--max-rows", "3000", "--flush-interval", "500ms",
                           "--until-drained"), timeout=180)
    good, bad = assert_exactly(lake, payloads)
    # The secret never reaches the logs, even at debug level.
    secret = lake.s3["secret_access_key"]
    assert secret not in p.stdout and secret not in p.stderr
    printed = lake.run("--print-config").stdout
    assert secret not in printed and "***" in printed and lake.s3["endpoint"] in printed

    d = lake.read_duckdb("lake.events", "SELECT count(*) AS n, count(DISTINCT event_guid) AS g FROM t")
    assert d.column("n")[0].as_py() == len(good)
    files = lake.data_files_on_disk("lake.events")
    assert files and all(f.startswith(lake.warehouse) for f in files)
    meta = lake.pyiceberg_table("lake.events").metadata_location
    assert meta.startswith(lake.warehouse + "/lake/events/metadata/"), meta


def test_maintenance_compacts_and_removes_orphans_on_s3(s3_lake, dev_broker, tmp_path):
    lake = s3_lake
    payloads = prepared(lake, dev_broker, tmp_path, 6_000, seed=72)
    lake.run(*run_args(dev_broker, "--max-rows", "500", "--flush-interval", "200ms",
                       "--until-drained", "--aggregates", "none"), timeout=180)
    before = lake.data_files_on_disk("lake.events")
    # A stray object under the table (a crashed writer's leftover) and one outside it.
    bucket, prefix = lake.warehouse[len("s3://"):].split("/", 1)
    c = s3_client(lake.reader_s3)
    stray = f"{prefix}/lake/events/data/stray-{time.time_ns()}.parquet"
    c.put_object(Bucket=bucket, Key=stray, Body=b"not parquet")
    c.put_object(Bucket=bucket, Key="elsewhere/keep.txt", Body=b"x")

    out = lake.run("maintain", "--table", "lake.events", "--compact", "--remove-orphans",
                   "--orphan-age", "0s", "--json", timeout=180).stdout
    assert stray.rsplit("/", 1)[1] in out, out
    after = lake.data_files_on_disk("lake.events")
    assert f"s3://{bucket}/{stray}" not in after
    live = lake.pyiceberg_table("lake.events").inspect.files().num_rows
    assert live < len(before), (live, len(before))
    c.head_object(Bucket=bucket, Key="elsewhere/keep.txt")  # outside the table: untouched
    assert_exactly(lake, payloads)


def test_an_s3_outage_mid_run_is_retried_and_loses_or_duplicates_nothing(s3_lake, s3_proxy, dev_broker, tmp_path):
    lake = s3_lake
    lake.run("table", "create", "--all")
    seeds = [81, 82, 83]
    payloads = {s: generated(lake, tmp_path, 8_000, seed=s, malformed=0.01) for s in seeds}
    p = lake.popen(*run_args(dev_broker, "--max-rows", "1000", "--flush-interval", "300ms",
                             "--aggregates", "none"))

    def committed():
        snap = lake.pyiceberg_table("lake.events").current_snapshot()
        return int(snap.summary.get("total-records", 0)) if snap else 0

    def wait_for(n, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline and committed() < n:
            time.sleep(0.3)
        return committed()

    produce(lake, dev_broker, 8_000, seed=81, malformed=0.01)
    assert wait_for(1) > 0
    # S3 goes away while the next messages arrive: their flushes fail, are rewound, retried.
    s3_proxy.set_down(True)
    produce(lake, dev_broker, 8_000, seed=82, malformed=0.01)
    time.sleep(10)
    s3_proxy.set_down(False)
    produce(lake, dev_broker, 8_000, seed=83, malformed=0.01)
    everything = [m for s in seeds for m in payloads[s]]
    good, _ = split(everything)
    n = wait_for(len(good), timeout=180)
    if n != len(good):
        p.kill()
        _, err = p.communicate()
        pytest.fail(f"{n} of {len(good)} rows committed; the loader's log:\n{err[-30000:]}")
    time.sleep(1)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    # Retried by the storage layer (backoff) and, past its budget, by a rewound flush.
    assert "will retry" in err or "commit failed; rewinding" in err, \
        "the outage never reached the loader:\n" + err
    assert lake.s3["secret_access_key"] not in err
    assert_exactly(lake, everything)
