"""Envelopes, projections, computed columns and rules (the mapping) in `floe run`: CloudEvents
load with `unnest = "/data"` exactly as unwrapped events do; computed values read by PyIceberg
equal the same expressions computed by DuckDB; exactly the rows breaking a rule are dead letters
naming it; rows + dead letters = messages; a mapping that cannot work is refused at start."""

import json
from collections import Counter

from oracle import expected_row
from readers import Lake
from test_kafka_loader import generated

COLUMNS = ["event_guid", "event_ts", "country", "is_returning", "user_id", "action",
           "device_type", "page", "category", "value", "session_duration"]


def produce(brokers, payloads):
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": brokers, "linger.ms": 5})
    for pl in payloads:
        p.produce("events", value=pl)
    assert p.flush(30) == 0


def write_config(lake, pipeline_toml):
    (lake.dir / "floe.toml").write_text(
        "[[pipelines]]\ntopics = [\"events\"]\ntable = \"lake.events\"\n" + pipeline_toml)


def run_drained(lake, brokers, timeout=180, chunk_rows=None):
    """`floe run` until drained; `chunk_rows` makes chunks small, so that transforms run on
    worker threads while the next chunk decodes (as they do with real volumes)."""
    chunks = ["--chunk-rows", str(chunk_rows)] if chunk_rows else []
    return lake.run("run", "--brokers", brokers, "--group", "g", "--flush-interval", "500ms",
                    "--aggregates", "none", "--until-drained", *chunks, timeout=timeout)


def cloud_event(payload: bytes) -> bytes:
    """A seed payload wrapped as a CloudEvent (structured mode); payloads that are not a JSON
    object are sent as they are (they are dead letters either way)."""
    try:
        obj = json.loads(payload)
    except ValueError:
        return payload
    if not isinstance(obj, dict):
        return payload
    return json.dumps({"specversion": "1.0", "type": "shop.event", "source": "/shop",
                       "id": str(obj.get("eventGuid")), "datacontenttype": "application/json",
                       "data": obj}).encode()


def _json_or_none(payload):
    try:
        return json.loads(payload)
    except ValueError:
        return None


def table_rows(lake, name="lake.events"):
    t = lake.read_pyiceberg(name)
    cols = [t.column(c).to_pylist() for c in COLUMNS]
    return Counter(zip(*cols))


def dead_letters(lake):
    t = lake.read_pyiceberg("lake.events_dead_letters")
    return [dict(zip(t.column_names, r)) for r in zip(*[t.column(c).to_pylist() for c in t.column_names])]


def test_cloud_events_unwrap_like_plain_events_and_missing_data_is_a_dead_letter(
        catalog_lake, dev_broker, tmp_path, floe_bin):
    lake = catalog_lake
    plain = generated(lake, tmp_path, 6_000, seed=801, malformed=0.02)
    wrapped = [cloud_event(p) for p in plain]
    # CloudEvents without a JSON object at /data: binary data, no data at all, data null.
    no_data = [json.dumps({"specversion": "1.0", "type": "t", "source": "/s", "id": f"b{i}",
                           "data_base64": "AAEC"}).encode() for i in range(40)]
    no_data += [json.dumps({"specversion": "1.0", "type": "t", "source": "/s", "id": f"n{i}"}).encode()
                for i in range(30)]
    no_data += [json.dumps({"specversion": "1.0", "id": f"z{i}", "data": None}).encode() for i in range(20)]
    messages = wrapped[:3000] + no_data + wrapped[3000:]

    lake.run("table", "create", "--all")
    write_config(lake, 'unnest = "/data"\n')
    produce(dev_broker, messages)
    out = run_drained(lake, dev_broker, chunk_rows=500).stdout
    assert f"{len(messages)} messages" in out, out

    # The same events, unwrapped, loaded by `floe load` into a lake of their own.
    ref = Lake(floe_bin, tmp_path / "ref", f"sqlite://{tmp_path}/ref/catalog.db",
               str(tmp_path / "ref" / "warehouse"))
    ref.run("table", "create", "--all")
    src = tmp_path / "plain.jsonl"
    src.write_bytes(b"\n".join(plain) + b"\n")
    ref.run("load", "--table", "lake.events", "--input", src)

    got, want = table_rows(lake), table_rows(ref)
    assert got == want
    oracle = [expected_row(p) for p in plain]
    assert sum(got.values()) == sum(1 for o in oracle if o) > 5_000

    dead = dead_letters(lake)
    assert len(dead) + sum(got.values()) == len(messages)
    # Envelope dead letters: the CloudEvents without an object at /data, and the malformed
    # messages that are JSON but not an object (sent unwrapped, so without /data either).
    not_objects = [p for p in plain if not isinstance(_json_or_none(p), (dict, type(None)))]
    envelope = [d for d in dead if d["error_kind"] == "envelope"]
    assert sorted(bytes(d["payload"]) for d in envelope) == sorted(no_data + not_objects)
    assert all("unnest" in d["error_message"] and "/data" in d["error_message"] for d in envelope)
    # The other dead letters are the malformed events, with the kinds they get unwrapped.
    ref_kinds = Counter(d["error_kind"] for d in dead_letters(ref))
    ref_kinds["not_an_object"] -= len(not_objects)
    assert +Counter(d["error_kind"] for d in dead if d["error_kind"] != "envelope") == +ref_kinds


def test_computed_columns_and_rules_on_seed_events(catalog_lake, dev_broker, tmp_path):
    lake = catalog_lake
    payloads = generated(lake, tmp_path, 8_000, seed=802, malformed=0.02)
    lake.run("table", "create", "--all")
    lake.run("table", "evolve", "lake.events", "--add-column", "country_code:string",
             "--add-column", "value_cents:long")
    # One rule as a table property (set by another tool), the rest in the pipeline's config.
    with lake.pyiceberg_table("lake.events").transaction() as tx:
        tx.set_properties(**{"floe.rule.cheap_enough": "value < 80"})
    write_config(lake, """
[pipelines.computed]
country_code = "upper(country)"
value_cents = "floor(value * 100)"
[pipelines.rules]
long_session = "session_duration >= 30"
""")
    show = lake.run("table", "show", "lake.events").stdout
    assert "rules.cheap_enough" in show and "from table property floe.rule.cheap_enough" in show, show
    assert "computed.value_cents" in show and "from pipelines[0].computed.value_cents" in show, show

    produce(dev_broker, payloads)
    out = run_drained(lake, dev_broker, chunk_rows=700).stdout
    assert f"{len(payloads)} messages" in out, out

    valid = {o["event_guid"]: o for o in (expected_row(p) for p in payloads) if o}
    breaks = {g: [name for name, ok in (("cheap_enough", o["value"] < 80),
                                         ("long_session", o["session_duration"] >= 30)) if not ok]
              for g, o in valid.items()}
    passing = {g for g, b in breaks.items() if not b}
    assert 0 < len(passing) < len(valid)

    t = lake.read_pyiceberg("lake.events")
    guids = t.column("event_guid").to_pylist()
    assert Counter(guids) == Counter(passing)
    # The computed values, as PyIceberg reads them, equal DuckDB's own evaluation.
    computed = dict(zip(guids, zip(t.column("country_code").to_pylist(), t.column("value_cents").to_pylist())))
    d = lake.read_duckdb("lake.events", "SELECT event_guid, upper(country) AS cc, "
                         "CAST(floor(value * 100) AS BIGINT) AS vc FROM t")
    duck = dict(zip(d.column("event_guid").to_pylist(), zip(d.column("cc").to_pylist(), d.column("vc").to_pylist())))
    assert computed == duck
    assert all(cc and cc.startswith("COUNTRY_") for cc, _ in computed.values())

    dead = dead_letters(lake)
    rule_dead = [d for d in dead if d["error_kind"] == "rule"]
    by_guid = {json.loads(bytes(d["payload"]))["eventGuid"]: d for d in rule_dead}
    assert len(by_guid) == len(rule_dead)
    assert set(by_guid) == {g for g, b in breaks.items() if b}
    for g, dl in by_guid.items():
        assert dl["error_field"] == breaks[g][0]
        for name in breaks[g]:
            assert f"rule {name} (" in dl["error_message"], dl["error_message"]
    assert len(dead) + len(guids) == len(payloads)
    assert len(dead) - len(rule_dead) == sum(1 for p in payloads if expected_row(p) is None)


def test_a_mapping_that_cannot_work_is_refused_at_start(catalog_lake, dev_broker):
    lake = catalog_lake
    lake.run("table", "create", "--all")
    cases = [
        ('unnest = "data"\n', "pipelines[0].unnest"),
        ('[pipelines.columns]\nnope = "/a"\n', "pipelines[0].columns.nope"),
        ('[pipelines.columns]\ncountry = "/geo/~x"\n', "pipelines[0].columns.country"),
        ('[pipelines.computed]\ncountry = "lower(countryy)"\n', "pipelines[0].computed.country"),
        ('[pipelines.computed]\nevent_ts = "value > 1"\n', "pipelines[0].computed.event_ts"),
        ('[pipelines.rules]\nnot_bool = "value + 1"\n', "pipelines[0].rules.not_bool"),
        ('[pipelines.rules]\nbad = "value >>> 1"\n', "pipelines[0].rules.bad"),
    ]
    for toml, setting in cases:
        write_config(lake, toml)
        p = lake.run("run", "--brokers", dev_broker, "--group", "g", "--until-drained",
                     check=False, timeout=60)
        assert p.returncode != 0, f"{toml!r} was accepted"
        assert setting in p.stderr, (toml, p.stderr[-2000:])
    # A bad table property is named as such.
    (lake.dir / "floe.toml").unlink()
    with lake.pyiceberg_table("lake.events").transaction() as tx:
        tx.set_properties(**{"floe.rule.broken": "valu > 1"})
    p = lake.run("run", "--brokers", dev_broker, "--group", "g", "--topic", "events",
                 "--table", "lake.events", "--until-drained", check=False, timeout=60)
    assert p.returncode != 0
    assert "property floe.rule.broken" in p.stderr, p.stderr[-2000:]


def test_floe_load_applies_the_mapping_and_a_fixed_rule_replays_its_dead_letters(catalog_lake, tmp_path):
    """The configured pipeline's mapping applies to `floe load` of its table; after a rule
    was relaxed, `floe dlq replay` loads exactly the rows it had rejected, once."""
    lake = catalog_lake
    plain = generated(lake, tmp_path, 3_000, seed=803)
    src = tmp_path / "wrapped.jsonl"
    src.write_bytes(b"\n".join(cloud_event(p) for p in plain) + b"\n")
    lake.run("table", "create", "--all")
    write_config(lake, 'unnest = "/data"\n[pipelines.rules]\nsmall_value = "value < 50"\n')
    lake.run("load", "--table", "lake.events", "--input", src)
    valid = [expected_row(p) for p in plain]
    small = {o["event_guid"] for o in valid if o["value"] < 50}
    assert Counter(lake.read_pyiceberg("lake.events").column("event_guid").to_pylist()) == Counter(small)
    dead = dead_letters(lake)
    assert {d["error_field"] for d in dead} == {"small_value"} and len(dead) == len(plain) - len(small)

    write_config(lake, 'unnest = "/data"\n[pipelines.rules]\nsmall_value = "value < 75"\n')
    report = json.loads(lake.run("dlq", "replay", "--table", "lake.events", "--json").stdout)
    below_75 = {o["event_guid"] for o in valid if o["value"] < 75}
    assert report["replayed"] == len(below_75 - small), report
    assert report["still_failing"] == {"rule": len(plain) - len(below_75)}, report
    again = json.loads(lake.run("dlq", "replay", "--table", "lake.events", "--json").stdout)
    assert again["replayed"] == 0, again
    assert Counter(lake.read_pyiceberg("lake.events").column("event_guid").to_pylist()) == Counter(below_75)
    assert len(dead_letters(lake)) == len(plain) - len(below_75)
