"""The CLI on a REST catalog: the quickstart, and settings that belong to one kind of catalog."""

from collections import Counter


def test_quickstart_runs_on_a_rest_catalog(rest_lake, tmp_path):
    lake = rest_lake
    # Only the URI: the SQL default warehouse folder is not sent as a warehouse name.
    lake.extra_env["FLOE__CATALOG__WAREHOUSE"] = "floe-data/warehouse"
    p = lake.run("quickstart", "--catalog-uri", lake.rest_gate.endpoint, timeout=600)
    assert "Done in" in p.stdout, p.stdout
    configs = lake.rest_gate.seen("GET", r"/v1/config")
    assert configs and all("warehouse" not in s.query for s in configs)
    # The tables are in the server's default catalog; PyIceberg reads them there.
    from pyiceberg.catalog.rest import RestCatalog
    cat = RestCatalog("q", uri=lake.rest_gate.endpoint)
    events = cat.load_table("lake.events").scan().to_arrow()
    assert events.num_rows > 0
    ids = Counter(events.column("event_guid").to_pylist())
    assert max(ids.values()) == 1, "an event loaded twice"


def test_rest_settings_with_a_sql_catalog_are_refused(sqlite_lake):
    lake = sqlite_lake
    lake.extra_env["FLOE__CATALOG__CREDENTIAL"] = "id:very-secret"
    p = lake.run("table", "list", check=False)
    assert p.returncode != 0
    assert "catalog.credential applies to an Iceberg REST catalog" in p.stderr, p.stderr
    assert "very-secret" not in p.stderr


def test_secrets_never_print(rest_lake, tmp_path):
    lake = rest_lake
    lake.extra_env.update({"FLOE__CATALOG__CREDENTIAL": "client:s3cr3t-value",
                           "FLOE__CATALOG__HEADERS__X_API_KEY": "k3y-value",
                           "FLOE__CATALOG__HEADERS__X_TENANT": "t1"})
    p = lake.run("--print-config")
    assert "s3cr3t-value" not in p.stdout and "k3y-value" not in p.stdout, p.stdout
    assert "client:***" in p.stdout and "t1" in p.stdout, p.stdout


def _load(lake, path, *args, check=True):
    return lake.run("load", "--table", "lake.events", "--input", path, *args, check=check,
                    timeout=300)


def test_a_static_token_is_sent_and_a_wrong_one_refused_clearly(rest_lake, tmp_path):
    from events import mixed_file
    lake, gate = rest_lake, rest_lake.rest_gate
    gate.static_tokens.add("tok-right")
    gate.require_auth = True
    good, _, _ = mixed_file(tmp_path / "e.jsonl", n_good=500, bad_every=10**9, seed=3)
    token_file = tmp_path / "token"
    token_file.write_text("tok-right\n")
    lake.extra_env["FLOE__CATALOG__TOKEN_FILE"] = str(token_file)
    lake.run("table", "create", "--all")
    _load(lake, tmp_path / "e.jsonl")
    lake.extra_env.pop("FLOE__CATALOG__TOKEN_FILE")
    lake.extra_env["FLOE__CATALOG__TOKEN"] = "tok-wrong-secret"
    p = lake.run("table", "list", check=False)
    assert p.returncode != 0 and "401" in p.stderr and "catalog.token" in p.stderr, p.stderr
    assert "tok-wrong-secret" not in p.stderr + p.stdout
    printed = lake.run("--print-config").stdout
    assert "tok-wrong-secret" not in printed and "token = \"***\"" in printed, printed
    gate.require_auth = False
    py = Counter(lake.read_pyiceberg("lake.events").column("event_guid").to_pylist())
    assert py == Counter(good.keys())


def test_oauth2_tokens_are_refreshed_across_a_long_load(rest_lake, tmp_path):
    """Client credentials from a file, the token endpoint named by oauth2_server_uri, tokens
    that live 2 s, and a load that commits for longer: floe gets new tokens before they
    expire (and on a 401), and never fails for it."""
    import subprocess
    import time
    from events import mixed_file
    lake, gate = rest_lake, rest_lake.rest_gate
    gate.clients["floe-loader"] = "cl1ent-secret"
    gate.require_auth = True
    gate.ttl = 2
    cred = tmp_path / "credential"
    cred.write_text("floe-loader:cl1ent-secret\n")
    lake.extra_env.update({"FLOE__CATALOG__CREDENTIAL_FILE": str(cred),
                           "FLOE__CATALOG__OAUTH2_SERVER_URI": f"{gate.endpoint}/oauth2/token",
                           "FLOE__CATALOG__SCOPE": "PRINCIPAL_ROLE:ALL",
                           "FLOE__CATALOG__HEADERS__X_TENANT": "analytics"})
    good, _, _ = mixed_file(tmp_path / "e.jsonl", n_good=1_000, bad_every=10**9, seed=4)
    lines = (tmp_path / "e.jsonl").read_text().splitlines(keepends=True)
    lake.run("table", "create", "--all")
    p = lake.popen("load", "--table", "lake.events", "--input", "-", "--load-id", "slow",
                   "--max-rows", "100", stdin=subprocess.PIPE)
    for i in range(0, len(lines), 100):
        p.stdin.write("".join(lines[i:i + 100]))
        p.stdin.flush()
        time.sleep(0.7)  # the whole load takes ~7 s: several token lifetimes
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert gate.tokens_issued >= 3, gate.tokens_issued
    token_requests = gate.seen("POST", r"/oauth2/token$")
    assert token_requests and all(b"scope=PRINCIPAL_ROLE%3AALL" in s.body for s in token_requests)
    assert not gate.seen("POST", r"/v1/oauth/tokens$"), "the default endpoint was used"
    assert all(s.headers.get("x-tenant") == "analytics"
               for s in gate.seen() if "/oauth2/" not in s.path)
    gate.require_auth = False
    py = Counter(lake.read_pyiceberg("lake.events").column("event_guid").to_pylist())
    assert py == Counter(good.keys())

    # A wrong secret: the token endpoint's answer, naming the credential, not the secret.
    cred.write_text("floe-loader:not-the-secret\n")
    gate.require_auth = True
    p = lake.run("table", "list", check=False)
    assert p.returncode != 0, p.stdout
    assert "invalid_client" in p.stderr and "catalog.credential" in p.stderr, p.stderr
    assert "not-the-secret" not in p.stderr


def test_a_private_ca_is_trusted_with_ca_file(rest_server, tls_certs, tmp_path, floe_bin):
    from readers import Lake
    from restgate import RestGate
    with RestGate(rest_server.uri, tls=(tls_certs.cert, tls_certs.key)) as gate:
        assert gate.endpoint.startswith("https://")
        lake = Lake(floe_bin, tmp_path, gate.endpoint, rest_server.new_warehouse(), kind="rest")
        # Not the machine's CA bundles: only what catalog.ca_file adds.
        for v in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            lake.extra_env[v] = ""
        p = lake.run("table", "list", check=False)
        assert p.returncode != 0 and "certificate" in p.stderr.lower(), p.stderr
        lake.extra_env["FLOE__CATALOG__CA_FILE"] = str(tls_certs.ca)
        lake.run("table", "create", "lake.events")
        assert "lake.events" in lake.run("table", "list").stdout
