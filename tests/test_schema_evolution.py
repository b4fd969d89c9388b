"""Schema evolution without restarts: a running `floe run` picks up columns added by another
tool (PyIceberg) or by `floe table evolve` (add, rename, widen, drop) from its next batch;
old rows read NULL for new columns; rows + dead letters = messages; forbidden changes are
refused and change nothing; dead letters of a missing column replay once it exists."""

import json
import signal
import time
from collections import Counter

from test_kafka_loader import generated, run_args

FLUSH = "400ms"


def produce(brokers, payloads):
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": brokers, "linger.ms": 5})
    for pl in payloads:
        p.produce("events", value=pl)
    assert p.flush(30) == 0


def with_fields(payloads, **fields):
    """Each payload (a JSON object) with extra keys; a callable value gets the object."""
    out = []
    for pl in payloads:
        obj = json.loads(pl)
        for k, v in fields.items():
            obj[k] = v(obj) if callable(v) else v
        out.append(json.dumps(obj).encode())
    return out


def wait_rows(lake, n, loader, timeout=60):
    """Waits until lake.events plus its dead letters hold `n` messages."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert loader.poll() is None, loader.communicate()[1][-3000:]
        total = 0
        for t in ("lake.events", "lake.events_dead_letters"):
            snap = lake.pyiceberg_table(t).current_snapshot()
            total += int(snap.summary.get("total-records", 0)) if snap else 0
        if total >= n:
            return total
        time.sleep(0.2)
    raise AssertionError(f"only {total} of {n} messages landed")


def start_loader(lake, dev_broker, aggregates=False):
    lake.run("table", "create", "--all")
    extra = [] if aggregates else ["--aggregates", "none"]
    return lake.popen(*run_args(dev_broker, "--flush-interval", FLUSH, *extra),
                      env={"RUST_LOG": "info"})


def stop(loader):
    assert loader.poll() is None, "the loader exited on its own"
    loader.send_signal(signal.SIGTERM)
    out, err = loader.communicate(timeout=60)
    assert loader.returncode == 0, err[-3000:]
    return err


def rows_by_guid(lake, *columns):
    t = lake.read_pyiceberg("lake.events")
    cols = {c: t.column(c).to_pylist() for c in ("event_guid", *columns)}
    return {g: tuple(cols[c][i] for c in columns) for i, g in enumerate(cols["event_guid"])}


def test_a_column_added_by_pyiceberg_fills_from_the_next_flush_without_a_restart(
        catalog_lake, dev_broker, tmp_path):
    from pyiceberg.types import StringType
    lake = catalog_lake
    before = generated(lake, tmp_path, 2_000, seed=91)
    after = with_fields(generated(lake, tmp_path, 2_000, seed=92),
                        referrer=lambda o: "ref-" + o["eventGuid"][:8])
    loader = start_loader(lake, dev_broker)
    produce(dev_broker, before)
    wait_rows(lake, len(before), loader)

    with lake.pyiceberg_table("lake.events").update_schema() as u:
        u.add_column("referrer", StringType(), doc="added by PyIceberg")
    time.sleep(1.0)  # > one flush interval
    produce(dev_broker, after)
    wait_rows(lake, len(before) + len(after), loader)
    err = stop(loader)
    assert "table schema changed" in err and "+referrer" in err, err[-3000:]

    rows = rows_by_guid(lake, "referrer")
    assert len(rows) == len(before) + len(after)
    for pl in before:
        assert rows[json.loads(pl)["eventGuid"]] == (None,)
    for pl in after:
        o = json.loads(pl)
        assert rows[o["eventGuid"]] == (o["referrer"],)
    dead = lake.read_pyiceberg("lake.events_dead_letters").num_rows
    assert dead == 0
    d = lake.read_duckdb("lake.events", "SELECT count(referrer) AS n, count(*) AS m FROM t")
    assert (d.column("n")[0].as_py(), d.column("m")[0].as_py()) == (len(after), len(before) + len(after))


def test_a_change_holds_across_a_rebalance(catalog_lake, dev_broker, tmp_path):
    """Two loaders in one group; after the change one is killed and the other takes over its
    partitions: every event after the change has the column, none is lost or doubled."""
    lake = catalog_lake
    before = generated(lake, tmp_path, 3_000, seed=103)
    after = with_fields(generated(lake, tmp_path, 3_000, seed=104), referrer="x")
    first = start_loader(lake, dev_broker)
    second = lake.popen(*run_args(dev_broker, "--flush-interval", FLUSH, "--aggregates", "none"))
    produce(dev_broker, before)
    wait_rows(lake, len(before), first)
    lake.run("table", "evolve", "lake.events", "--add-column", "referrer:string")
    time.sleep(1.0)
    second.send_signal(signal.SIGKILL)
    second.wait()
    produce(dev_broker, after)
    wait_rows(lake, len(before) + len(after), first, timeout=120)
    stop(first)
    rows = rows_by_guid(lake, "referrer")
    assert len(rows) == len(before) + len(after)
    assert Counter(v for (v,) in rows.values()) == Counter({None: len(before), "x": len(after)})
    assert lake.read_pyiceberg("lake.events").num_rows == len(rows)  # no guid twice


def test_floe_table_evolve_add_rename_widen_drop_while_loading(catalog_lake, dev_broker, tmp_path):
    """With the aggregates on: they go on over the evolved table (session_duration, which
    they sum, is widened) and stay equal to a recomputation from the raw table."""
    from test_aggregates import assert_aggregates_exact
    lake = catalog_lake
    loader = start_loader(lake, dev_broker, aggregates=True)
    sent = 0

    def phase(payloads):
        nonlocal sent
        produce(dev_broker, payloads)
        sent += len(payloads)
        wait_rows(lake, sent, loader)

    big = 5_000_000_000  # beyond int: a dead letter until session_duration is widened

    a = generated(lake, tmp_path, 1_000, seed=93)
    a_big = with_fields(generated(lake, tmp_path, 50, seed=94), session_duration=big)
    phase(a + a_big)

    out = lake.run("table", "evolve", "lake.events", "--add-column", "referrer:string:where from").stdout
    assert "add optional column referrer string" in out and "schema 0 → 1" in out, out
    time.sleep(1.0)
    b = with_fields(generated(lake, tmp_path, 1_000, seed=95), referrer=lambda o: "b-" + o["eventGuid"][:6])
    phase(b)

    lake.run("table", "evolve", "lake.events", "--rename-column", "referrer:source")
    time.sleep(1.0)
    c = with_fields(generated(lake, tmp_path, 1_000, seed=96), source=lambda o: "c-" + o["eventGuid"][:6])
    # Producers not yet updated still send the old key: the rename keeps it as an alias.
    c_old = with_fields(generated(lake, tmp_path, 200, seed=961), referrer="old-key")
    phase(c + c_old)

    lake.run("table", "evolve", "lake.events", "--widen", "session_duration:long")
    time.sleep(1.0)
    d_big = with_fields(generated(lake, tmp_path, 50, seed=97), session_duration=big)
    phase(d_big)

    lake.run("table", "evolve", "lake.events", "--drop-column", "user_id")
    time.sleep(1.0)
    e = generated(lake, tmp_path, 1_000, seed=98)
    phase(e)
    err = stop(loader)
    for change in ("+referrer", "referrer→source", "session_duration: int→long", "-user_id"):
        assert change in err, (change, err[-4000:])

    t = lake.read_pyiceberg("lake.events")
    assert "user_id" not in t.column_names and "referrer" not in t.column_names
    # New files stop carrying the dropped column; the first ones still have it.
    import os
    import pyarrow.parquet as pq
    files = sorted(lake.data_files_on_disk("lake.events"), key=os.path.getmtime)
    assert "user_id" in pq.read_schema(files[0]).names
    assert "user_id" not in pq.read_schema(files[-1]).names
    assert "source" in pq.read_schema(files[-1]).names
    rows = rows_by_guid(lake, "source", "session_duration")
    guid = lambda pl: json.loads(pl)["eventGuid"]
    # Old files read under the new name; rows from before the column existed read NULL.
    for pl in a + e:
        assert rows[guid(pl)][0] is None
    for pl in b:
        assert rows[guid(pl)][0] == "b-" + guid(pl)[:6]
    for pl in c:
        assert rows[guid(pl)][0] == "c-" + guid(pl)[:6]
    for pl in c_old:
        assert rows[guid(pl)][0] == "old-key"
    # Too big for int before the widening (dead letters), loaded after it.
    for pl in d_big:
        assert rows[guid(pl)][1] == big
    dead = lake.read_pyiceberg("lake.events_dead_letters").column("payload").to_pylist()
    assert Counter(dead) == Counter(a_big)
    assert len(rows) + len(dead) == sent

    # DuckDB reads the same over old and new files: the new name, promoted values.
    d = lake.read_duckdb("lake.events", "SELECT count(source) AS s, max(session_duration) AS m, "
                                        "count(*) AS n FROM t")
    assert d.column("s")[0].as_py() == len(b) + len(c) + len(c_old)
    assert d.column("m")[0].as_py() == big
    assert d.column("n")[0].as_py() == len(rows)
    assert_aggregates_exact(lake)


def test_forbidden_changes_are_refused_and_change_nothing(catalog_lake, dev_broker, tmp_path):
    lake = catalog_lake
    lake.run("table", "create", "--all")
    lake.run("load", "--table", "lake.events", "--input", _jsonl(lake, tmp_path, 200))
    before = lake.pyiceberg_table("lake.events").metadata_location
    refused = {
        ("--widen", "country:int"): "does not allow string → int",
        ("--widen", "value:float"): "does not allow double → float",
        ("--add-required-column", "tenant:string"): "the table has rows",
        ("--drop-column", "event_ts"): "partition spec",
        ("--add-column", "country:string"): "column country already exists",
        ("--rename-column", "page:Country"): "already exists",
        ("--drop-column", "nope"): "no column nope",
        ("--add-column", "x:varchar2"): "unknown type",
        # The shipped aggregates read page by name: the change would break them.
        ("--drop-column", "page"): "would break aggregate",
    }
    for args, why in refused.items():
        p = lake.run("table", "evolve", "lake.events", *args, check=False)
        assert p.returncode != 0 and why in p.stderr, (args, p.stderr)
        assert lake.pyiceberg_table("lake.events").metadata_location == before
    # A dry run prints the plan and commits nothing.
    p = lake.run("table", "evolve", "lake.events", "--add-column", "referrer:string", "--dry-run")
    assert "would add optional column referrer" in p.stdout and "referrer" in p.stdout
    assert lake.pyiceberg_table("lake.events").metadata_location == before


def _jsonl(lake, tmp_path, n):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(generated(lake, tmp_path, n, seed=99)) + b"\n")
    return path


def test_dead_letters_for_a_missing_column_replay_once_it_is_added(catalog_lake, dev_broker, tmp_path):
    lake = catalog_lake
    loader = start_loader(lake, dev_broker)
    plain = generated(lake, tmp_path, 500, seed=101)
    tagged = with_fields(generated(lake, tmp_path, 300, seed=102), campaign=lambda o: "k" + o["eventGuid"][:4])
    produce(dev_broker, plain)
    wait_rows(lake, len(plain), loader)  # the loader is up and has committed
    # Unknown keys become dead letters (set by another tool while the loader runs).
    with lake.pyiceberg_table("lake.events").transaction() as tx:
        tx.set_properties({"floe.unknown-fields": "reject"})
    time.sleep(1.0)
    produce(dev_broker, tagged)
    wait_rows(lake, len(plain) + len(tagged), loader)
    stop(loader)
    dead = lake.read_pyiceberg("lake.events_dead_letters").column("payload").to_pylist()
    assert Counter(dead) == Counter(tagged)

    lake.run("table", "evolve", "lake.events", "--add-column", "campaign:string")
    lake.run("dlq", "replay", "--table", "lake.events")
    lake.run("dlq", "replay", "--table", "lake.events")  # a second replay adds nothing
    rows = rows_by_guid(lake, "campaign")
    assert len(rows) == len(plain) + len(tagged)
    for pl in tagged:
        o = json.loads(pl)
        assert rows[o["eventGuid"]] == (o["campaign"],)
    assert lake.read_pyiceberg("lake.events_dead_letters").num_rows == 0
