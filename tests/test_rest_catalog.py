"""floe on an Iceberg REST catalog, end to end (REST only): the REST server of the Iceberg
Java stack (tests/java/MiniRestCatalogServer.java) behind the gate (tests/restgate.py), which
adds auth, TLS, faults and a record of every request. What is checked is read back with
readers floe does not control (PyIceberg's RestCatalog, Iceberg Java's REST client).

1. Lost races through the commit endpoint: loads and a loader group on one table, SIGKILLs.
2. Ambiguous commit outcomes (5xx after the server applied it, a cut connection) and commits
   refused before the server saw them (503), then orphan removal.
3. Auth: static tokens, OAuth2 client credentials and their refresh, custom headers, TLS.
4. Warehouses are separate catalogs.
5. State-only commits (a dead-letter table no row reaches) stay few.
6. A column added by another REST client is picked up by a running loader.
"""

import json
import os
import signal
import subprocess
import time
from collections import Counter

import pytest

from events import mixed_file
from readers import Lake, local_path
from test_kafka_loader import assert_exactly, generated, prepared, run_args, split


# --- helpers ---------------------------------------------------------------------------------

def guids(lake, name="lake.events"):
    return Counter(lake.read_pyiceberg(name).column("event_guid").to_pylist())


def java_guids(lake, name="lake.events"):
    return Counter(r["event_guid"] for r in lake.java_sql(f"SELECT event_guid FROM {name}"))


def dead_payloads(lake, name="lake.events_dead_letters"):
    return Counter(lake.read_pyiceberg(name).column("payload").to_pylist())


def referenced(lake, name):
    """Every file the table's metadata references, by what references it: the current
    metadata file, each snapshot's manifest list, its manifests and its live data and delete
    files (time travel to any snapshot must work)."""
    table = lake.pyiceberg_table(name)
    out = {local_path(table.metadata_location): "metadata"}
    for snap in table.snapshots():
        out[local_path(snap.manifest_list)] = f"manifest list of {snap.snapshot_id}"
        for m in snap.manifests(table.io):
            out[local_path(m.manifest_path)] = f"manifest of {snap.snapshot_id}"
            for e in m.fetch_manifest_entry(table.io, discard_deleted=True):
                out[local_path(e.data_file.file_path)] = f"file of {snap.snapshot_id}"
    return out


def missing_files(lake, name):
    return sorted(f"{why}: {p}" for p, why in referenced(lake, name).items()
                  if not os.path.exists(p))


def stray_metadata(lake, name):
    """Manifests and manifest lists in the table's metadata folder that no snapshot
    references (what a commit wrote and did not clean up)."""
    ns, table = name.split(".")
    folder = lake.rest_server.warehouse_dir(lake.warehouse) / ns / table / "metadata"
    refs = referenced(lake, name)
    return sorted(str(f) for f in folder.glob("*.avro") if str(f) not in refs)


def state_only(lake, name):
    """The table's snapshots that only record floe's state (no file added)."""
    snaps = lake.pyiceberg_table(name).snapshots()
    return [s for s in snaps if s.summary.additional_properties.get("floe.state-only") == "true"]


def total_records(lake, name):
    snap = lake.pyiceberg_table(name).current_snapshot()
    return int(snap.summary.get("total-records", 0)) if snap else 0


def wait_until(cond, timeout, what, procs=()):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"a process exited ({p.returncode}) while waiting for "
                                     f"{what}: {p.communicate()[1][-3000:]}")
        if cond():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def stop(procs, timeout=60):
    """SIGTERM, then the processes' (returncode, stderr)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        out.append((p.returncode, err))
    return out


def produce_payloads(brokers, payloads, topic="events"):
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": brokers, "linger.ms": 5})
    for pl in payloads:
        p.produce(topic, value=pl)
    assert p.flush(30) == 0


def high_watermarks(brokers, topic="events", partitions=6):
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": brokers, "group.id": "watermarks"})
    try:
        return {str(p): c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(partitions)}
    finally:
        c.close()


# --- 1. lost races through the commit endpoint ----------------------------------------------

def test_loads_and_a_loader_group_lose_races_and_land_everything_once(
        rest_lake, dev_broker, tmp_path, iceberg_java):
    """Two `floe load`s of different files (bad lines included: the dead-letter table is
    contended too) and a two-member `floe run` group on one table at once, through the gate;
    a load and a member are SIGKILLed mid-way and restarted. The server refuses stale
    commits (409), floe re-plans them: every event and dead letter once, as PyIceberg and
    Iceberg Java read it, and no file the table references is missing."""
    lake, gate = rest_lake, rest_lake.rest_gate
    payloads = prepared(lake, dev_broker, tmp_path, 8_000, seed=301, malformed=0.01)
    good_msgs, bad_msgs = split(payloads)
    files, bad_lines = [], []
    for i in range(2):
        good, bad, _ = mixed_file(tmp_path / f"f{i}.jsonl", n_good=2_500, bad_every=97,
                                  seed=310 + i)
        files.append(good)
        bad_lines += [p for p, _ in bad]
    args = run_args(dev_broker, "--max-rows", "400", "--flush-interval", "200ms")
    load_args = [("load", "--table", "lake.events", "--input", tmp_path / f"f{i}.jsonl",
                  "--max-rows", "100") for i in range(2)]
    members = [lake.popen(*args) for _ in range(2)]
    loads = [lake.popen(*a) for a in load_args]

    time.sleep(1.5)
    assert loads[0].poll() is None, "the load finished before it could be killed"
    loads[0].send_signal(signal.SIGKILL)
    loads[0].wait()
    time.sleep(1.0)
    assert members[1].poll() is None, members[1].communicate()[1][-2000:]
    members[1].send_signal(signal.SIGKILL)
    members[1].wait()
    members[1] = lake.popen(*args)
    loads[0] = lake.popen(*load_args[0])

    outs = []
    for p in loads:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
        outs.append(out)
    assert outs[0].startswith("resumed load"), outs[0]

    expected = Counter(r["event_guid"] for r in good_msgs)
    for g in files:
        expected.update(g.keys())
    want_dead = Counter(bad_msgs) + Counter(bad_lines)
    wait_until(lambda: total_records(lake, "lake.events") >= sum(expected.values())
               and total_records(lake, "lake.events_dead_letters") >= sum(want_dead.values()),
               180, "every message to land", members)
    time.sleep(1.0)
    for code, err in stop(members):
        assert code == 0, err[-3000:]

    conflicts = [s for s in gate.commits() if s.status == 409]
    assert conflicts, "no commit lost a race: the test raced nothing"
    ids = guids(lake)
    missing, extra = expected - ids, ids - expected
    assert not missing and not extra, (f"{sum(missing.values())} missing, "
                                       f"{sum(extra.values())} extra")
    assert dead_payloads(lake) == want_dead
    java = java_guids(lake)
    assert java == expected, "Iceberg Java reads another table"
    for name in ("lake.events", "lake.events_dead_letters"):
        assert missing_files(lake, name) == [], name
    # Both members and both loads wrote.
    writers = {s.summary.additional_properties.get("floe.writer")
               for s in lake.pyiceberg_table("lake.events").snapshots()}
    assert len(writers) >= 4, writers


# --- 2. ambiguous outcomes ---------------------------------------------------------------------

def _maintain_removes_nothing_referenced(lake, names):
    """`floe maintain --all` with orphan removal (every file older than 0 s): it removes no
    file the tables reference, and each table reads the same after. Returns what it removed."""
    before = {n: (referenced(lake, n), guids(lake, n) if n == "lake.events" else
                  dead_payloads(lake, n)) for n in names}
    p = lake.run("maintain", "--all", "--remove-orphans", "--orphan-age", "0s", "--force",
                 "--json")
    removed = set()
    reports = json.loads(p.stdout)
    assert {r["table"] for r in reports} >= set(names), p.stdout
    for doc in reports:
        for r in doc["steps"]["remove_orphans"]["removed"]:
            removed.add(local_path(r))
    for n, (refs, rows) in before.items():
        wrongly = sorted(removed & set(refs))
        assert not wrongly, f"{n}: orphan removal deleted referenced files {wrongly[:5]}"
        assert missing_files(lake, n) == [], n
        now = guids(lake, n) if n == "lake.events" else dead_payloads(lake, n)
        assert now == rows, f"{n} reads differently after maintenance"
    return removed


def test_ambiguous_commit_outcomes_land_once_and_orphan_removal_keeps_the_table(
        rest_lake, tmp_path):
    """The gate forwards a commit (the server applies it) and answers 502, 504 or 500, or
    cuts the connection, on the 2nd, 4th, 6th and 8th commit of the events table and the
    2nd of the dead-letter table, during one `floe load` of several batches: floe reads the
    table back, sees its commit, and goes on. Every line once; one snapshot per batch;
    nothing the table references is missing, nor removed by orphan removal after."""
    lake, gate = rest_lake, rest_lake.rest_gate
    good, bad, lines = mixed_file(tmp_path / "e.jsonl", n_good=2_000, bad_every=60, seed=321)
    lake.run("table", "create", "--all")
    rules = [gate.status_after_forward(502, table="lake.events", skip=1),
             gate.status_after_forward(504, table="lake.events", skip=3),
             gate.status_after_forward(500, table="lake.events", skip=5),
             gate.cut_after_forward(table="lake.events", skip=7),
             gate.status_after_forward(502, table="lake.events_dead_letters", skip=1)]
    p = lake.run("load", "--table", "lake.events", "--input", tmp_path / "e.jsonl",
                 "--max-rows", "200", check=False, timeout=240)
    assert [r.fired for r in rules] == [1] * len(rules), [(r.kind, r.code, r.fired)
                                                          for r in rules]
    if p.returncode != 0:
        # floe may give up on a commit it cannot resolve; a rerun must finish the load.
        again = lake.run("load", "--table", "lake.events", "--input", tmp_path / "e.jsonl",
                         "--max-rows", "200", timeout=240)
        assert again.stdout.startswith("resumed load"), (p.stderr[-2000:], again.stdout)
    faulted = [s for s in gate.commits() if s.fault]
    assert [s.status for s in faulted if s.path.endswith("/events")] == [502, 504, 500, None]
    assert guids(lake) == Counter(good.keys()), "a line is missing or loaded twice"
    assert dead_payloads(lake) == Counter(pl for pl, _ in bad)
    batches = -(-lines // 200)
    snaps = lake.pyiceberg_table("lake.events").snapshots()
    assert len(snaps) == batches, [s.summary.additional_properties.get("added-records")
                                   for s in snaps]
    # No commit was sent twice: each faulted commit was resolved from the table.
    assert len([s for s in gate.commits() if s.path.endswith("/events")]) == batches
    for name in ("lake.events", "lake.events_dead_letters"):
        assert missing_files(lake, name) == [], name
        # What the resolved commits wrote is the table's; nothing is left over.
        assert stray_metadata(lake, name) == [], name
    _maintain_removes_nothing_referenced(lake, ["lake.events", "lake.events_dead_letters"])
    # The same file again: skipped (the load's state survived the faults).
    again = lake.run("load", "--table", "lake.events", "--input", tmp_path / "e.jsonl")
    assert again.stdout.startswith("skipped"), again.stdout


def test_a_commit_refused_before_the_server_saw_it_is_retried_once(rest_lake, tmp_path):
    """503 before forwarding (nothing applied), three times mid-load: floe cannot tell it
    from a commit in flight, keeps the attempt's files until the table says, and tries
    again; exactly one snapshot per batch lands, no line twice, no referenced file
    missing, and orphan removal then takes only the abandoned attempts' files."""
    lake, gate = rest_lake, rest_lake.rest_gate
    good, bad, lines = mixed_file(tmp_path / "e.jsonl", n_good=1_500, bad_every=10**9,
                                  seed=331)
    lake.run("table", "create", "--all")
    rules = [gate.status_before_forward(503, table="lake.events", skip=k) for k in (1, 3, 5)]
    p = lake.run("load", "--table", "lake.events", "--input", tmp_path / "e.jsonl",
                 "--max-rows", "250", timeout=240)
    assert "1500 accepted" in p.stdout, p.stdout
    assert [r.fired for r in rules] == [1, 1, 1]
    events = [s for s in gate.commits() if s.path.endswith("/events")]
    batches = -(-lines // 250)
    assert [s.status for s in events].count(503) == 3
    assert len(events) == batches + 3, [s.status for s in events]
    assert guids(lake) == Counter(good.keys())
    snaps = lake.pyiceberg_table("lake.events").snapshots()
    assert len(snaps) == batches, len(snaps)
    assert missing_files(lake, "lake.events") == []
    # The abandoned attempts' manifests and lists were deleted when the retry landed.
    assert stray_metadata(lake, "lake.events") == []
    _maintain_removes_nothing_referenced(lake, ["lake.events"])


def test_a_commit_still_in_flight_when_floe_stops_waiting_lands_at_most_once(
        rest_lake, tmp_path):
    """catalog.request_timeout 1 s, and the gate holds the 2nd, 3rd and 4th commit 2.5 s
    before forwarding them: floe gives up waiting while the server has not seen them yet,
    finds the table unmoved, and tries again on the same base; a held attempt reaches the
    server later and lands (the next attempt then loses the race and finds it), or is
    refused because another landed. Every line once, one snapshot per batch, and nothing
    left over."""
    lake, gate = rest_lake, rest_lake.rest_gate
    good, _, lines = mixed_file(tmp_path / "e.jsonl", n_good=1_000, bad_every=10**9, seed=336)
    lake.run("table", "create", "--all")
    lake.extra_env["FLOE__CATALOG__REQUEST_TIMEOUT"] = "1s"
    held = gate.delay(2.5, times=3, table="lake.events", skip=1)
    p = lake.run("load", "--table", "lake.events", "--input", tmp_path / "e.jsonl",
                 "--max-rows", "200", timeout=120)
    assert "1000 accepted" in p.stdout, p.stdout
    assert held.fired == 3
    assert "timed out" in p.stderr, p.stderr[-2000:]
    time.sleep(2.6)  # the last held commit reaches the server (and is refused)
    assert guids(lake) == Counter(good.keys()), "a batch is missing or landed twice"
    snaps = lake.pyiceberg_table("lake.events").snapshots()
    assert len(snaps) == -(-lines // 200), len(snaps)
    assert missing_files(lake, "lake.events") == []
    assert stray_metadata(lake, "lake.events") == []
    _maintain_removes_nothing_referenced(lake, ["lake.events"])


@pytest.mark.parametrize("fault", ["502", "cut"])
def test_a_schema_change_whose_answer_is_lost_succeeds(rest_lake, fault):
    lake, gate = rest_lake, rest_lake.rest_gate
    lake.run("table", "create", "lake.events")
    rule = (gate.cut_after_forward(table="lake.events") if fault == "cut"
            else gate.status_after_forward(502, table="lake.events"))
    p = lake.run("table", "evolve", "lake.events", "--add-column", "referrer:string",
                 check=False)
    assert rule.fired == 1
    table = lake.pyiceberg_table("lake.events")
    assert table.schema().find_field("referrer") is not None  # the server applied it
    assert len(table.schemas()) == 2, "the change was applied twice"
    assert p.returncode == 0, p.stderr[-2000:]


def test_an_expiry_whose_answer_is_lost_still_deletes_the_expired_files(rest_lake, tmp_path):
    lake, gate = rest_lake, rest_lake.rest_gate
    good, _, _ = mixed_file(tmp_path / "e.jsonl", n_good=1_000, bad_every=10**9, seed=337)
    lake.run("table", "create", "lake.events")
    lake.run("load", "--table", "lake.events", "--input", tmp_path / "e.jsonl",
             "--max-rows", "200", "--no-dead-letters")
    lake.run("maintain", "--table", "lake.events", "--compact", "--force")
    before = len(lake.pyiceberg_table("lake.events").snapshots())
    assert before >= 5
    rule = gate.status_after_forward(502, table="lake.events")
    p = lake.run("maintain", "--table", "lake.events", "--expire-snapshots", "--older-than",
                 "0s", "--retain-last", "1", "--json")
    assert rule.fired == 1
    assert len(lake.pyiceberg_table("lake.events").snapshots()) == 1  # applied
    assert guids(lake) == Counter(good.keys())
    [report] = json.loads(p.stdout)
    expired = report["steps"]["expire_snapshots"]
    live = {local_path(f) for f in
            lake.pyiceberg_table("lake.events").inspect.files().column("file_path").to_pylist()}
    leftover = sorted(set(lake.data_files_on_disk("lake.events")) - live)
    assert (expired["snapshots_before"], expired["snapshots_after"]) == (before, 1), expired
    assert leftover == [], f"{len(leftover)} data files of expired snapshots left on disk"


# --- 3. auth ------------------------------------------------------------------------------------

def test_a_static_token_from_env_or_file_and_a_wrong_one_refused_without_showing_it(
        rest_lake, tmp_path):
    lake, gate = rest_lake, rest_lake.rest_gate
    gate.require_auth = True
    gate.static_tokens.update({"tok-env-7f3a", "tok-file-91c2"})
    good, _, _ = mixed_file(tmp_path / "e.jsonl", n_good=400, bad_every=10**9, seed=341)
    lake.token = "tok-env-7f3a"
    lake.run("table", "create", "--all")
    lake.run("load", "--table", "lake.events", "--input", tmp_path / "e.jsonl")
    assert all(s.headers.get("Authorization") == "Bearer tok-env-7f3a" for s in gate.seen())
    # token_file: read from the file (its newline trimmed).
    lake.token = None
    (tmp_path / "tok").write_text("tok-file-91c2\n")
    lake.extra_env["FLOE__CATALOG__TOKEN_FILE"] = str(tmp_path / "tok")
    gate.clear()
    assert "lake.events" in lake.run("table", "list").stdout
    assert gate.seen() and all(s.headers.get("Authorization") == "Bearer tok-file-91c2"
                               for s in gate.seen())
    # A wrong token: a clear refusal that does not show it.
    del lake.extra_env["FLOE__CATALOG__TOKEN_FILE"]
    lake.token = "tok-wrong-d00d"
    for args in (("table", "list"),
                 ("load", "--table", "lake.events", "--input", tmp_path / "e.jsonl")):
        p = lake.run(*args, check=False)
        assert p.returncode != 0, p.stdout
        assert "401" in p.stderr and "catalog.token" in p.stderr, p.stderr
        assert "tok-wrong-d00d" not in p.stderr + p.stdout
    printed = lake.run("--print-config")
    assert "tok-wrong-d00d" not in printed.stdout + printed.stderr, printed.stdout
    assert 'token = "***"' in printed.stdout, printed.stdout
    lake.token = "tok-env-7f3a"
    assert guids(lake) == Counter(good.keys())


def test_oauth2_tokens_refresh_across_a_long_load_and_after_revocation(rest_lake, tmp_path):
    """Client credentials from the environment at the catalog's default token endpoint
    (/v1/oauth/tokens), tokens that live 2 s, a load that commits for ~7 s, and every
    token revoked once mid-way: floe refreshes before expiry, gets a new token after the
    401, and the load succeeds with every line once. Custom headers reach the server."""
    lake, gate = rest_lake, rest_lake.rest_gate
    gate.clients["floe-cc"] = "cc-s3cret-42"
    gate.require_auth = True
    gate.ttl = 2
    lake.credential = "floe-cc:cc-s3cret-42"
    lake.extra_env.update({"FLOE__CATALOG__HEADERS__X_TENANT": "analytics",
                           "FLOE__CATALOG__HEADERS__X_REQUEST_SOURCE": "floe-tests"})
    good, _, _ = mixed_file(tmp_path / "e.jsonl", n_good=1_000, bad_every=10**9, seed=351)
    lines = (tmp_path / "e.jsonl").read_text().splitlines(keepends=True)
    lake.run("table", "create", "--all")
    issued = gate.tokens_issued
    p = lake.popen("load", "--table", "lake.events", "--input", "-", "--load-id", "slow",
                   "--max-rows", "100", stdin=subprocess.PIPE)
    for i in range(0, len(lines), 100):
        if i == 500:
            gate.expire_tokens()  # revoked server-side: the next request gets a 401
        p.stdin.write("".join(lines[i:i + 100]))
        p.stdin.flush()
        time.sleep(0.7)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    assert gate.tokens_issued - issued >= 3, gate.tokens_issued - issued
    assert gate.seen("POST", r"^/v1/oauth/tokens$") and not gate.seen("POST", r"^/oauth2/")
    assert any(s.status == 401 for s in gate.seen() if "/oauth" not in s.path), \
        "the revocation was not noticed (the test revoked nothing)"
    others = [s for s in gate.seen() if "/oauth" not in s.path]
    assert all(s.headers.get("x-tenant") == "analytics"
               and s.headers.get("x-request-source") == "floe-tests" for s in others)
    assert all((s.headers.get("Authorization") or "").startswith("Bearer gate-")
               for s in others)
    assert guids(lake) == Counter(good.keys())
    assert "1000 accepted" in out, out


def test_oauth2_from_a_credential_file_at_oauth2_server_uri_and_a_wrong_secret(
        rest_lake, tmp_path):
    lake, gate = rest_lake, rest_lake.rest_gate
    gate.clients["floe-file"] = "f1le-s3cret"
    gate.require_auth = True
    cred = tmp_path / "credential"
    cred.write_text("floe-file:f1le-s3cret\n")
    token_uri = f"{gate.endpoint}/oauth2/token"
    lake.extra_env.update({"FLOE__CATALOG__CREDENTIAL_FILE": str(cred),
                           "FLOE__CATALOG__OAUTH2_SERVER_URI": token_uri,
                           "FLOE__CATALOG__SCOPE": "PRINCIPAL_ROLE:loader"})
    lake.run("table", "create", "lake.events")
    assert "lake.events" in lake.run("table", "list").stdout
    asked = gate.seen("POST", r"^/oauth2/token$")
    assert asked and not gate.seen("POST", r"/v1/oauth/tokens$")
    form = asked[0].body.decode()
    assert "client_id=floe-file" in form and "scope=PRINCIPAL_ROLE%3Aloader" in form, form

    cred.write_text("floe-file:wrong-s3cret-x\n")
    p = lake.run("table", "list", check=False)
    assert p.returncode != 0, p.stdout
    assert "invalid_client" in p.stderr and "catalog.credential" in p.stderr, p.stderr
    assert "/oauth2/token" in p.stderr, "the token endpoint is not named: " + p.stderr
    assert "wrong-s3cret-x" not in p.stderr + p.stdout
    printed = lake.run("--print-config").stdout
    assert "wrong-s3cret-x" not in printed and "f1le-s3cret" not in printed
    # In the environment rather than a file: the same refusal, the secret still hidden.
    del lake.extra_env["FLOE__CATALOG__CREDENTIAL_FILE"]
    lake.credential = "floe-file:env-wrong-s3cret"
    p = lake.run("table", "list", check=False)
    assert p.returncode != 0 and "invalid_client" in p.stderr, p.stderr
    assert "env-wrong-s3cret" not in p.stderr + p.stdout
    printed = lake.run("--print-config").stdout
    assert "env-wrong-s3cret" not in printed and "floe-file:***" in printed, printed


def test_a_tls_catalog_is_trusted_with_ca_file_only(rest_server, tls_certs, tmp_path,
                                                    floe_bin, monkeypatch):
    """The gate serves HTTPS with a certificate of a throwaway CA: without catalog.ca_file
    floe refuses it (a TLS error naming the catalog), with it floe loads, and PyIceberg
    (given the same CA) reads every line once."""
    from restgate import RestGate
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    with RestGate(rest_server.uri, tls=(tls_certs.cert, tls_certs.key)) as gate:
        warehouse = rest_server.new_warehouse()
        plain = Lake(floe_bin, tmp_path / "plain", gate.endpoint, warehouse, kind="rest")
        p = plain.run("table", "create", "--all", check=False)
        assert p.returncode != 0, p.stdout
        text = p.stderr.lower()
        assert "certificate" in text or "tls" in text, p.stderr
        assert "127.0.0.1" in p.stderr, p.stderr
        assert not gate.seen(), "a request got through without trusting the server"

        lake = Lake(floe_bin, tmp_path / "tls", gate.endpoint, warehouse, kind="rest",
                    ca_file=tls_certs.ca, warehouse_dir=rest_server.warehouse_dir(warehouse))
        good, _, _ = mixed_file(tmp_path / "e.jsonl", n_good=300, bad_every=10**9, seed=361)
        lake.run("table", "create", "--all")
        lake.run("load", "--table", "lake.events", "--input", tmp_path / "e.jsonl")
        assert guids(lake) == Counter(good.keys())
        assert gate.commits() and all(s.status == 200 for s in gate.commits())
        # A CA file that is not PEM is named.
        (tmp_path / "bad.pem").write_text("not a certificate\n")
        lake.ca_file = str(tmp_path / "bad.pem")
        p = lake.run("table", "list", check=False)
        assert p.returncode != 0 and "catalog.ca_file" in p.stderr, p.stderr
        lake.close()


def test_ca_file_alone_suffices_without_system_certificates(rest_server, tls_certs, tmp_path,
                                                            floe_bin):
    from restgate import RestGate
    with RestGate(rest_server.uri, tls=(tls_certs.cert, tls_certs.key)) as gate:
        warehouse = rest_server.new_warehouse()
        lake = Lake(floe_bin, tmp_path, gate.endpoint, warehouse, kind="rest",
                    ca_file=tls_certs.ca, warehouse_dir=rest_server.warehouse_dir(warehouse))
        lake.extra_env.update({"SSL_CERT_FILE": "", "SSL_CERT_DIR": "", "RUST_BACKTRACE": "0"})
        good, _, _ = mixed_file(tmp_path / "e.jsonl", n_good=50, bad_every=10**9, seed=362)
        lake.run("table", "create", "--all")  # the catalog client alone: works
        p = lake.run("load", "--table", "lake.events", "--input", tmp_path / "e.jsonl",
                     check=False)
        assert p.returncode == 0, p.stderr[-1500:]
    # Read back past the gate, straight from the server (PyIceberg would need the CA too).
    reader = Lake(floe_bin, tmp_path / "r", rest_server.uri, warehouse, kind="rest",
                  warehouse_dir=rest_server.warehouse_dir(warehouse))
    assert guids(reader) == Counter(good.keys())


# --- 4. warehouses --------------------------------------------------------------------------------

def test_warehouses_on_one_server_do_not_see_each_other(rest_lake, rest_server, tmp_path):
    a = rest_lake
    gate = a.rest_gate
    wb = rest_server.new_warehouse()
    b = Lake(a.bin, tmp_path / "b", gate.endpoint, wb, kind="rest",
             warehouse_dir=rest_server.warehouse_dir(wb))
    a.run("table", "create", "--all")
    b.run("table", "create", "lake.events")
    listed_a = a.run("table", "list").stdout
    listed_b = b.run("table", "list").stdout
    assert "lake.events_dead_letters" in listed_a and "lake.events_hourly" in listed_a, listed_a
    assert "lake.events" in listed_b, listed_b
    assert "dead_letters" not in listed_b and "hourly" not in listed_b, listed_b
    # The same table name holds each warehouse's own rows and files.
    ga, _, _ = mixed_file(tmp_path / "a.jsonl", n_good=300, bad_every=10**9, seed=371)
    gb, _, _ = mixed_file(tmp_path / "b.jsonl", n_good=200, bad_every=10**9, seed=372)
    a.run("load", "--table", "lake.events", "--input", tmp_path / "a.jsonl")
    b.run("load", "--table", "lake.events", "--input", tmp_path / "b.jsonl",
          "--no-dead-letters")
    assert guids(a) == Counter(ga.keys())
    assert guids(b) == Counter(gb.keys())
    fa, fb = a.data_files_on_disk("lake.events"), b.data_files_on_disk("lake.events")
    assert fa and fb and not set(fa) & set(fb)
    assert all(f.startswith(str(rest_server.warehouse_dir(wb))) for f in fb)
    # The same file loaded into b's table is a new load there (its load state is b's).
    again = b.run("load", "--table", "lake.events", "--input", tmp_path / "a.jsonl",
                  "--no-dead-letters").stdout
    assert "300 accepted" in again, again
    assert guids(a) == Counter(ga.keys())
    # Every request after the config went to the warehouse's prefix.
    for s in gate.seen():
        if s.path != "/v1/config":
            assert s.path.startswith((f"/v1/{a.warehouse}/", f"/v1/{wb}/")), s.path
    b.close()


# --- 5. state-only commits --------------------------------------------------------------------------

def test_a_dead_letter_table_no_row_reaches_gains_few_state_only_snapshots(
        rest_lake, dev_broker, tmp_path):
    """A `floe run` fed clean messages in waves for ~8 s, flushing every 300 ms: the
    dead-letter table gets no snapshot per flush, only its offsets (a snapshot without
    files, which REST needs to make the commit a compare-and-swap) when the loader stops.
    The offsets recorded in both tables are the topic's ends; a restart reads nothing again
    and adds no snapshot."""
    lake = rest_lake
    waves = [generated(lake, tmp_path, 1_000, seed=381 + i) for i in range(5)]
    lake.run("table", "create", "--all")
    loader = lake.popen(*run_args(dev_broker, "--flush-interval", "300ms", "--max-rows", "400"))
    sent = []
    for wave in waves:
        produce_payloads(dev_broker, wave)
        sent += wave
        time.sleep(1.5)
    wait_until(lambda: total_records(lake, "lake.events") >= len(sent), 60,
               "every message to land", [loader])
    during = state_only(lake, "lake.events_dead_letters")
    [(code, err)] = stop([loader])
    assert code == 0, err[-3000:]

    assert_exactly(lake, sent)
    events = lake.pyiceberg_table("lake.events")
    dlq = lake.pyiceberg_table("lake.events_dead_letters")
    assert len(events.snapshots()) >= 10, len(events.snapshots())  # many flushes
    assert state_only(lake, "lake.events") == []
    dl_state = state_only(lake, "lake.events_dead_letters")
    assert len(dlq.snapshots()) == len(dl_state) <= 2, [s.summary for s in dlq.snapshots()]
    assert len(during) <= 1, len(during)
    for s in dl_state:
        props = s.summary.additional_properties
        assert props.get("added-data-files", "0") == "0" and \
            props.get("total-records", "0") == "0", props
    ends = high_watermarks(dev_broker)
    assert sum(ends.values()) == len(sent)
    assert json.loads(events.properties["floe.offsets.g"]) == {"events": ends}
    assert json.loads(dlq.properties["floe.offsets.g"]) == {"events": ends}

    # A restart finds nothing to read again.
    before = {n: len(lake.pyiceberg_table(n).snapshots())
              for n in ("lake.events", "lake.events_dead_letters")}
    lake.run(*run_args(dev_broker, "--flush-interval", "300ms", "--until-drained"),
             timeout=120)
    after = {n: len(lake.pyiceberg_table(n).snapshots()) for n in before}
    assert after == before, (before, after)
    assert_exactly(lake, sent)


# --- 6. evolution by another REST client ----------------------------------------------------------

def test_a_column_added_through_the_rest_catalog_by_pyiceberg_is_loaded_live(
        rest_lake, dev_broker, tmp_path, iceberg_java):
    """While `floe run` loads, PyIceberg's RestCatalog (another client of the same REST
    server) adds a column and widens another: from its next flush floe loads the new field
    into the new column and values only the wider type holds, without a restart."""
    from pyiceberg.types import LongType, StringType
    from test_schema_evolution import with_fields
    lake = rest_lake
    big = 5_000_000_000  # beyond int: a dead letter while session_duration is an int
    before = generated(lake, tmp_path, 1_500, seed=391)
    early_big = with_fields(generated(lake, tmp_path, 20, seed=392), session_duration=big)
    after = with_fields(generated(lake, tmp_path, 1_500, seed=393),
                        referrer=lambda o: "ref-" + o["eventGuid"][:8])
    late_big = with_fields(generated(lake, tmp_path, 20, seed=394), session_duration=big,
                           referrer="big")
    lake.run("table", "create", "--all")
    loader = lake.popen(*run_args(dev_broker, "--flush-interval", "400ms", "--aggregates",
                                  "none"), env={"RUST_LOG": "info"})
    produce_payloads(dev_broker, before + early_big)
    n = len(before) + len(early_big)
    wait_until(lambda: total_records(lake, "lake.events")
               + total_records(lake, "lake.events_dead_letters") >= n, 60,
               "the first messages to land", [loader])

    catalog = lake.pyiceberg_rest_catalog()
    with catalog.load_table("lake.events").update_schema() as u:
        u.add_column("referrer", StringType(), doc="added by PyIceberg over REST")
        u.update_column("session_duration", LongType())
    time.sleep(1.2)  # > one flush interval
    produce_payloads(dev_broker, after + late_big)
    n += len(after) + len(late_big)
    wait_until(lambda: total_records(lake, "lake.events")
               + total_records(lake, "lake.events_dead_letters") >= n, 60,
               "the later messages to land", [loader])
    [(code, err)] = stop([loader])
    assert code == 0, err[-3000:]
    assert "table schema changed" in err and "+referrer" in err, err[-3000:]

    t = lake.read_pyiceberg("lake.events")
    rows = dict(zip(t.column("event_guid").to_pylist(),
                    zip(t.column("referrer").to_pylist(),
                        t.column("session_duration").to_pylist())))
    assert t.num_rows == len(rows) == len(before) + len(after) + len(late_big)
    g = lambda pl: json.loads(pl)["eventGuid"]  # noqa: E731
    for pl in before:
        assert rows[g(pl)][0] is None
    for pl in after:
        assert rows[g(pl)][0] == "ref-" + g(pl)[:8], (g(pl), rows[g(pl)])
    for pl in late_big:
        assert rows[g(pl)] == ("big", big)
    assert dead_payloads(lake) == Counter(early_big)
    # Iceberg Java (its own REST client) reads the same column.
    java = lake.java_sql("SELECT count(referrer) AS r, max(session_duration) AS m, "
                         "count(*) AS n FROM lake.events")
    assert java == [{"r": len(after) + len(late_big), "m": big, "n": len(rows)}], java
