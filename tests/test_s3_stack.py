"""The production stack on this machine: warehouse on a real S3 server (moto_server), catalog
on a real PostgreSQL server, Kafka-protocol broker in another process. Generate → run → read
back with PyIceberg and DuckDB over S3; S3 outages mid-run; maintenance listing S3."""

import signal
import threading
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
                   "--orphan-age", "0s", "--force", "--json", timeout=180).stdout
    assert stray.rsplit("/", 1)[1] in out, out
    after = lake.data_files_on_disk("lake.events")
    assert f"s3://{bucket}/{stray}" not in after
    live = lake.pyiceberg_table("lake.events").inspect.files().num_rows
    assert live < len(before), (live, len(before))
    c.head_object(Bucket=bucket, Key="elsewhere/keep.txt")  # outside the table: untouched
    assert_exactly(lake, payloads)


class StderrTail:
    """Collects a running process's stderr on a thread, so a test can wait for a log line."""

    def __init__(self, proc):
        self.proc, self.lines, self._done = proc, [], threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)
        self._done.set()

    def text(self):
        return "".join(self.lines)

    def wait_for(self, needle, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            if needle in self.text():
                return True
            time.sleep(0.2)
        return needle in self.text()

    def rest(self, timeout):
        """The whole log once the process has exited."""
        self.proc.wait(timeout=timeout)
        self._done.wait(timeout=10)
        return self.text()


def test_an_s3_outage_mid_run_is_retried_and_loses_or_duplicates_nothing(s3_lake, s3_proxy, dev_broker, tmp_path):
    lake = s3_lake
    lake.run("table", "create", "--all")
    seeds = [81, 82, 83]
    payloads = {s: generated(lake, tmp_path, 8_000, seed=s, malformed=0.01) for s in seeds}
    p = lake.popen(*run_args(dev_broker, "--max-rows", "1000", "--flush-interval", "300ms",
                             "--aggregates", "none"),
                   env={"RUST_BACKTRACE": "1"})  # as many services run; errors must not print them
    log = StderrTail(p)

    def committed():
        snap = lake.pyiceberg_table("lake.events").current_snapshot()
        return int(snap.summary.get("total-records", 0)) if snap else 0

    def wait_for(n, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline and committed() < n and p.poll() is None:
            time.sleep(0.3)
        return committed()

    def fail(why):
        p.kill()
        pytest.fail(f"{why}; the loader's log:\n{log.rest(30)[-30000:]}")

    produce(lake, dev_broker, 8_000, seed=81, malformed=0.01)
    if wait_for(1) == 0:
        fail("nothing committed before the outage")
    # S3 goes away while the next messages arrive: their flushes fail past the storage layer's
    # own retries, and the rewind that follows cannot read the table either. S3 stays away
    # until the loader has said so: the loader must wait it out, not stop.
    s3_proxy.set_down(True)
    produce(lake, dev_broker, 8_000, seed=82, malformed=0.01)
    outage = log.wait_for("reading the committed offsets to rewind to failed; retrying", 240)
    s3_proxy.set_down(False)
    if not outage:
        fail("no rewind was tried during the outage")
    produce(lake, dev_broker, 8_000, seed=83, malformed=0.01)
    everything = [m for s in seeds for m in payloads[s]]
    good, _ = split(everything)
    n = wait_for(len(good), timeout=180)
    if n != len(good):
        fail(f"{n} of {len(good)} rows committed")
    time.sleep(1)
    p.send_signal(signal.SIGTERM)
    err = log.rest(120)
    assert p.returncode == 0, err
    assert "commit failed; rewinding" in err, err
    assert "Backtrace:" not in err, "storage errors are logged with backtraces:\n" + err[-5000:]
    assert lake.s3["secret_access_key"] not in err
    assert_exactly(lake, everything)
