"""The vended-credentials test tooling, checked with PyIceberg as the client: an S3 server
that enforces credentials (tests/vendeds3.py, moto with IAM auth on), a REST catalog over
PyIceberg's SqlCatalog that vends credentials for it (tests/pyrest.py), and the
`vended_lake` fixture; then floe on it (xfail until floe uses vended credentials)."""

import time
from collections import Counter

import pyarrow as pa
import pytest
import requests
from botocore.exceptions import ClientError
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.exceptions import CommitFailedException

from events import mixed_file

SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string())])
DELEGATION = "header.X-Iceberg-Access-Delegation"


def rows(n, start=0):
    return pa.table({"id": list(range(start, start + n)),
                     "name": [f"n{i}" for i in range(start, start + n)]}, schema=SCHEMA)


def catalog(server, delegation="vended-credentials", **props):
    """PyIceberg's REST catalog on `server` with no S3 keys of its own."""
    return RestCatalog("t", uri=server.uri, warehouse=server.warehouse,
                       **{DELEGATION: delegation}, **props)


def error_code(call):
    with pytest.raises(ClientError) as e:
        call()
    return e.value.response["Error"]["Code"]


def load(server, table, delegation="vended-credentials"):
    """The raw LoadTableResult of `table` ("ns.t")."""
    ns, t = table.split(".")
    r = requests.get(f"{server.uri}/v1/{server.warehouse}/namespaces/{ns}/tables/{t}",
                     headers={"X-Iceberg-Access-Delegation": delegation}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_s3_server_refuses_all_but_valid_credentials(vended_s3):
    s3 = vended_s3
    bucket = s3.create_bucket(f"auth-{time.time_ns()}")
    s3.client().put_object(Bucket=bucket, Key="wh/a/t/x", Body=b"x")
    s3.client().put_object(Bucket=bucket, Key="wh/a/u/x", Body=b"x")
    cred = s3.vend(f"s3://{bucket}/wh/a/t", ttl_s=60)
    assert cred.access_key_id.startswith("ASIA") and cred.session_token
    vended = s3.client(cred)
    assert vended.get_object(Bucket=bucket, Key="wh/a/t/x")["Body"].read() == b"x"
    vended.put_object(Bucket=bucket, Key="wh/a/t/y", Body=b"y")
    # Only on its prefix.
    assert error_code(lambda: vended.get_object(Bucket=bucket, Key="wh/a/u/x")) == "AccessDenied"
    assert error_code(lambda: vended.put_object(Bucket=bucket, Key="z", Body=b"")) == "AccessDenied"
    # Unknown keys, wrong secrets, a dropped or wrong session token, no signature at all.
    key = {"endpoint": s3.endpoint, "access_key_id": "AKIAUNKNOWN000000000",
           "secret_access_key": "x"}
    get = {"Bucket": bucket, "Key": "wh/a/t/x"}
    assert error_code(lambda: s3.client(key).get_object(**get)) == "InvalidAccessKeyId"
    wrong = dict(cred.s3(s3.endpoint), secret_access_key="wrong")
    assert error_code(lambda: s3.client(wrong).get_object(**get)) == "SignatureDoesNotMatch"
    no_token = dict(cred.s3(s3.endpoint), session_token=None)
    assert error_code(lambda: s3.client(no_token).get_object(**get)) == "InvalidAccessKeyId"
    bad_token = dict(cred.s3(s3.endpoint), session_token="forged")
    assert error_code(lambda: s3.client(bad_token).get_object(**get)) == "InvalidToken"
    anonymous = requests.get(f"{s3.endpoint}/{bucket}/wh/a/t/x", timeout=10)
    assert anonymous.status_code == 403 and b"<Code>AccessDenied</Code>" in anonymous.content
    # Vended credentials cannot manage IAM.
    assert error_code(lambda: s3.client(cred, "iam").create_user(UserName="x")) == "AccessDenied"
    # Revoked: refused from then on.
    s3.revoke(cred)
    assert error_code(lambda: vended.get_object(**get)) == "AccessDenied"
    # The record tells who asked for what.
    mine = s3.requests(cred.access_key_id)
    assert [(r.method, r.status) for r in mine][:2] == [("GET", 200), ("PUT", 200)]
    assert mine[-1].status == 403
    assert any(r.access_key_id is None and r.status == 403 for r in s3.requests())


@pytest.mark.parametrize("storage_credentials", [False, True],
                         ids=["config", "storage-credentials"])
def test_pyiceberg_writes_and_reads_with_only_vended_credentials(vended_rest, vended_s3,
                                                                 storage_credentials):
    server = vended_rest
    server.use_storage_credentials = storage_credentials
    cat = catalog(server)
    cat.create_namespace("lake")
    t = cat.create_table("lake.t", schema=SCHEMA)
    t.append(rows(3))
    t = cat.load_table("lake.t")
    t.append(rows(2, start=3))
    assert sorted(cat.load_table("lake.t").scan().to_arrow().column("id").to_pylist()) == \
        [0, 1, 2, 3, 4]

    # Each create and load vended new credentials, on the table's location only.
    assert [v.route for v in server.vends] == ["create", "load", "load"]
    location = f"{server.location}/lake/t"
    assert {c.prefix for c in server.credentials} == {location}
    assert all(r.headers.get("X-Iceberg-Access-Delegation") == "vended-credentials"
               for r in server.requests)
    # PyIceberg wrote the data and manifests with vended keys only; the server wrote the
    # table's metadata with the admin's.
    keys = {c.access_key_id for c in server.credentials}
    bucket_path = f"/{server.bucket}/"
    puts = [r for r in vended_s3.requests() if r.method in ("PUT", "POST")
            and r.path.startswith(bucket_path)]
    data = [r for r in puts if r.path.endswith(".parquet")]     # multipart: POST, PUT, POST
    assert len({r.path for r in data}) == 2
    assert all(r.access_key_id in keys and r.status == 200 for r in data)
    meta = [r for r in puts if r.path.endswith(".metadata.json")]
    assert meta and all(r.access_key_id == vended_s3.admin["access_key_id"] for r in meta)

    # The LoadTableResult's shape: credentials in config, or in storage-credentials.
    result = load(server, "lake.t")
    endpoint = {"s3.endpoint": vended_s3.endpoint, "s3.region": "us-east-1",
                "s3.path-style-access": "true"}
    cred = server.current("lake.t")
    keys = {"s3.access-key-id": cred.access_key_id,
            "s3.secret-access-key": cred.secret_access_key,
            "s3.session-token": cred.session_token,
            "s3.session-token-expires-at-ms": str(cred.expires_at_ms)}
    if storage_credentials:
        assert result["config"] == endpoint
        assert result["storage-credentials"] == [{"prefix": location,
                                                  "config": {**endpoint, **keys}}]
    else:
        assert result["config"] == {**endpoint, **keys}
        assert "storage-credentials" not in result
    # Without the header: the endpoint and no keys.
    assert load(server, "lake.t", delegation="")["config"] == endpoint
    assert len(server.vends) == 4


@pytest.mark.parametrize("how", ["no-delegation-header", "server-vends-nothing"])
def test_without_vended_credentials_pyiceberg_is_refused_by_s3(vended_rest, vended_s3, how):
    server = vended_rest
    if how == "server-vends-nothing":
        server.vend = False
        cat = catalog(server)
    else:
        cat = catalog(server, delegation="")
    cat.create_namespace("lake")
    t = cat.create_table("lake.t", schema=SCHEMA)   # the server writes the metadata
    with pytest.raises(OSError) as e:
        t.append(rows(3))
    assert "ACCESS_DENIED" in str(e.value) or "AccessDenied" in str(e.value), str(e.value)
    assert server.vends == []
    assert cat.load_table("lake.t").current_snapshot() is None
    # PyArrow found no credentials and sent its requests unsigned; none was let through.
    table = f"/{server.bucket}/{server.warehouse}/lake/t/"
    sent = [r for r in vended_s3.requests() if r.path.startswith(table)
            and r.access_key_id != vended_s3.admin["access_key_id"]]
    assert sent and all(r.access_key_id is None and r.status == 403 for r in sent), sent


def test_a_commit_on_a_stale_base_gets_409(vended_rest):
    server = vended_rest
    cat = catalog(server)
    cat.create_namespace("lake")
    cat.create_table("lake.t", schema=SCHEMA, properties={"commit.retry.num-retries": "0"})
    first, second = cat.load_table("lake.t"), cat.load_table("lake.t")
    first.append(rows(3))
    with pytest.raises(CommitFailedException):
        second.append(rows(2, start=10))
    # As the REST spec says: 409 with an ErrorResponse.
    refused = [r for r in server.seen("POST", r"/tables/t$") if r.status == 409]
    assert len(refused) == 1
    assert sorted(cat.load_table("lake.t").scan().to_arrow().column("id").to_pylist()) == \
        [0, 1, 2]

    # A raw commit whose requirement is stale, and one on a missing table.
    base = server.seen("POST", r"/tables/t$")[0].json()
    url = f"{server.uri}/v1/{server.warehouse}/namespaces/lake/tables/t"
    r = requests.post(url, json=base, timeout=30)
    assert r.status_code == 409, r.text
    assert r.json()["error"]["type"] == "CommitFailedException"
    assert r.json()["error"]["code"] == 409
    r = requests.post(url + "x", json={"requirements": [], "updates": []}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["type"] == "NoSuchTableException"
    r = requests.post(f"{server.uri}/v1/{server.warehouse}/namespaces",
                      json={"namespace": ["lake"]}, timeout=30)
    assert r.status_code == 409 and r.json()["error"]["type"] == "AlreadyExistsException"


@pytest.mark.vended(revoke_old=True, vend_ttl_s=2)
def test_revoke_old_stops_the_old_key_when_new_ones_are_vended(vended_rest, vended_s3):
    server = vended_rest
    cat = catalog(server)
    cat.create_namespace("lake")
    t = cat.create_table("lake.t", schema=SCHEMA)
    t.append(rows(3))
    data_key = t.inspect.files().column("file_path")[0].as_py().split("/", 3)[3]
    get = {"Bucket": server.bucket, "Key": data_key}

    result = load(server, "lake.t")
    expires = int(result["config"]["s3.session-token-expires-at-ms"])
    assert 0 < expires - time.time() * 1000 <= 2500
    old = server.current("lake.t")
    assert old.access_key_id == result["config"]["s3.access-key-id"]
    assert vended_s3.client(old).get_object(**get)["Body"].read()
    # The create's credentials were revoked by that load's.
    assert server.credentials[0].revoked
    assert error_code(lambda: vended_s3.client(server.credentials[0]).get_object(**get)) == \
        "AccessDenied"

    # A refresh through the credentials endpoint (PyIceberg's load_credentials).
    fresh = cat.load_credentials("lake.t", f"{server.location}/lake/t/metadata/x")
    assert fresh["s3.access-key-id"] != old.access_key_id
    assert [v.route for v in server.vends] == ["create", "load", "credentials"]
    assert error_code(lambda: vended_s3.client(old).get_object(**get)) == "AccessDenied"
    assert vended_s3.client(server.current("lake.t")).get_object(**get)["Body"].read()
    # PyIceberg's table from before the refresh holds revoked credentials now.
    with pytest.raises(OSError):
        t.scan().to_arrow()
    assert cat.load_table("lake.t").scan().to_arrow().num_rows == 3


@pytest.mark.vended(enforce_expiry=True, vend_ttl_s=1)
def test_enforced_expiry_revokes_credentials_when_they_expire(vended_rest, vended_s3):
    server = vended_rest
    cat = catalog(server)
    cat.create_namespace("lake")
    t = cat.create_table("lake.t", schema=SCHEMA)
    t.append(rows(3))
    cred = server.current("lake.t")
    assert vended_s3.client(cred).list_objects_v2(Bucket=server.bucket, Prefix="vended/lake/t/")
    time.sleep(max(0.0, cred.expires_at_ms / 1000 - time.time()) + 0.5)
    assert cred.revoked
    assert error_code(lambda: vended_s3.client(cred).list_objects_v2(
        Bucket=server.bucket, Prefix="vended/lake/t/")) == "AccessDenied"
    assert cat.load_table("lake.t").scan().to_arrow().num_rows == 3   # new ones work


def test_vended_lake_readers_use_the_admin_and_cause_no_vend(vended_lake):
    lake = vended_lake
    server = lake.vended_rest
    env = lake.env()
    assert env["FLOE__CATALOG__ACCESS_DELEGATION"] == "vended-credentials"
    assert env["FLOE__S3__ENDPOINT"] == lake.vended_s3.endpoint
    assert "FLOE__S3__ACCESS_KEY_ID" not in env and "FLOE__S3__SECRET_ACCESS_KEY" not in env
    assert not any(k.startswith("AWS_") and "KEY" in k for k in env)

    cat = catalog(server)
    cat.create_namespace("lake")
    cat.create_table("lake.t", schema=SCHEMA).append(rows(4))
    vends = len(server.vends)
    assert sorted(lake.read_pyiceberg("lake.t").column("id").to_pylist()) == [0, 1, 2, 3]
    assert lake.read_duckdb("lake.t", "SELECT count(*) AS n FROM t").column("n")[0].as_py() == 4
    assert len(lake.data_files_on_disk("lake.t")) == 1
    assert len(server.vends) == vends
    assert server.seen("GET", r"/tables/t$")[-1].headers.get("X-Iceberg-Access-Delegation") == ""


def test_floe_loads_with_only_vended_credentials(vended_lake, tmp_path):
    lake = vended_lake
    server, s3 = lake.vended_rest, lake.vended_s3
    good, bad, _ = mixed_file(tmp_path / "events.jsonl", n_good=2000, bad_every=100, seed=31)
    lake.run("table", "create", "lake.events", timeout=120)
    out = lake.run("load", "--table", "lake.events", "--input", tmp_path / "events.jsonl",
                   timeout=180).stdout
    assert f"{len(good)} accepted" in out, out

    py = Counter(lake.read_pyiceberg("lake.events").column("event_guid").to_pylist())
    duck = Counter(lake.read_duckdb("lake.events", "SELECT event_guid FROM t")
                   .column("event_guid").to_pylist())
    assert py == duck == Counter(good.keys())
    dead = lake.read_pyiceberg("lake.events_dead_letters").column("payload").to_pylist()
    assert Counter(dead) == Counter(p for p, _ in bad)

    # floe asked for credentials and wrote every data file with vended ones.
    assert server.vends
    floe = [r for r in server.requests if "/tables" in r.path
            and (r.headers.get("User-Agent") or "").startswith("floe/")]
    assert floe and all(r.headers.get("X-Iceberg-Access-Delegation") == "vended-credentials"
                        for r in floe)
    keys = {c.access_key_id for c in server.credentials}
    data = [r for r in s3.requests() if r.method in ("PUT", "POST")
            and r.path.split("?")[0].endswith(".parquet")
            and r.path.startswith(f"/{server.bucket}/")]
    assert data and all(r.access_key_id in keys for r in data)

    # Maintenance on vended credentials too: compaction writes, expiry deletes, orphan
    # removal lists the table's location with them (a stray file there is removed).
    stray = f"{server.location}/lake/events/data/stray.parquet".removeprefix("s3://")
    bucket, key = stray.split("/", 1)
    admin = s3.client()
    admin.put_object(Bucket=bucket, Key=key, Body=b"not referenced")
    out = lake.run("maintain", "--all", "--compact", "--expire-snapshots", "--older-than", "0s",
                   "--retain-last", "1", "--remove-orphans", "--orphan-age", "0s", "--force",
                   timeout=300).stdout
    assert "lake.events: remove-orphans" in out, out
    listed = admin.list_objects_v2(Bucket=bucket, Prefix=key)
    assert listed.get("KeyCount", 0) == 0, "the stray file is still there"
    py = Counter(lake.read_pyiceberg("lake.events").column("event_guid").to_pylist())
    assert py == Counter(good.keys())


@pytest.mark.vended(enforce_expiry=True, vend_ttl_s=15, use_storage_credentials=True)
def test_floe_renews_expired_vended_credentials(vended_lake, tmp_path):
    """A load whose credentials expire (and are revoked on S3) between its batches: floe gets
    new ones from the catalog before writing, and every line lands once."""
    import subprocess
    lake = vended_lake
    server, s3 = lake.vended_rest, lake.vended_s3
    good, _, _ = mixed_file(tmp_path / "events.jsonl", n_good=400, bad_every=10**9, seed=37)
    lines = (tmp_path / "events.jsonl").read_text().splitlines(keepends=True)
    lake.run("table", "create", "--all", timeout=120)
    p = lake.popen("load", "--table", "lake.events", "--input", "-", "--load-id", "slow",
                   "--max-rows", "200", stdin=subprocess.PIPE)
    try:
        p.stdin.write("".join(lines[:200]))
        p.stdin.flush()
        # Past the credentials' lifetime (15 s; floe's signer wants 10 s left at least): S3
        # refuses them by now, so writing the first batch (when the next line comes) needs
        # new ones.
        time.sleep(16)
        p.stdin.write("".join(lines[200:]))
        p.stdin.flush()
    except BrokenPipeError:
        pass  # floe stopped: its stderr says why
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    py = Counter(lake.read_pyiceberg("lake.events").column("event_guid").to_pylist())
    assert py == Counter(good.keys())
    # Several vends, and the data files were written with more than one of them.
    keys = {c.access_key_id for c in server.credentials}
    data = [r for r in s3.requests() if r.method in ("PUT", "POST")
            and r.path.split("?")[0].endswith(".parquet")
            and r.path.startswith(f"/{server.bucket}/")]
    used = {r.access_key_id for r in data}
    assert len(used) >= 2 and used <= keys, (used, keys)
