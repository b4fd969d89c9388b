"""The compose stack's files agree with each other and with floe: docker-compose validates the
file, every service the README promises is there with its port, Trino's catalog points at the
catalog and warehouse floe uses, and the dashboard only charts metrics floe exports. The stack
is closed by default: every published port binds to 127.0.0.1, no secret has a working default
(compose refuses to start without them; scripts/compose-secrets generates them), and the
services that talk to each other take the same secret."""

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from readers import ROOT

SERVICES = {  # service → host port the README names
    "kafka": 9092, "minio": 9000, "postgres": 5432, "trino": 8080, "floe": 9464,
    "prometheus": 9090, "grafana": 3000,
}
ONE_SHOT = ["minio-init", "tables", "generator", "maintain-hourly", "maintain-daily"]
# What docker-compose.yml requires (no default) and what scripts/compose-secrets writes.
SECRETS = ("POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "GRAFANA_PASSWORD")
# What docker-compose.rest.yml requires on top (scripts/compose-secrets writes them too).
REST_SECRETS = ("POLARIS_CLIENT_ID", "POLARIS_CLIENT_SECRET")
ALL_SECRETS = SECRETS + REST_SECRETS
REST = ("docker-compose.yml", "docker-compose.rest.yml")
FLOE_SERVICES = ["floe", "tables", "generator", "maintain-hourly", "maintain-daily"]
# Every variable the compose files read: cleared from the environment compose runs in, and
# --env-file replaces any .env in the clone, so a developer's own cannot decide a test.
STACK_VARS = ALL_SECRETS + ("FLOE_BIND_ADDRESS", "FLOE_KAFKA_ADVERTISED_HOST")
SECRET_KEY = re.compile(r"password|secret|key", re.IGNORECASE)
KNOWN_DEFAULTS = {
    "", "admin", "administrator", "password", "passw0rd", "pass", "secret", "changeme",
    "change-me", "minioadmin", "minio", "minio123", "postgres", "root", "floe", "floe-secret",
    "trino", "kafka", "grafana", "iceberg", "test", "guest", "default", "123456", "12345678",
}


def docker_compose():
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not installed (scripts/test installs Debian's package)")
    return exe


def run_compose(env_file, files=("docker-compose.yml",), **env):
    """`docker-compose config` of files with only env_file and env as the stack's variables."""
    clean = {k: v for k, v in os.environ.items() if k not in STACK_VARS}
    clean.update(env)
    args = [a for f in files for a in ("-f", str(ROOT / f))]
    return subprocess.run([docker_compose(), "--env-file", str(env_file), *args, "config"],
                          cwd=ROOT, env=clean, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def compose_config(env_file, files=("docker-compose.yml",), **env):
    out = run_compose(env_file, files, **env)
    assert out.returncode == 0, out.stderr
    import yaml
    return yaml.safe_load(out.stdout)


def write_secrets(path):
    subprocess.run([str(ROOT / "scripts/compose-secrets"), str(path)], check=True,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return path


def read_env_file(path):
    return dict(l.split("=", 1) for l in path.read_text().splitlines()
                if l.strip() and not l.lstrip().startswith("#"))


@pytest.fixture(scope="module")
def secrets_file(tmp_path_factory):
    return write_secrets(tmp_path_factory.mktemp("compose") / "compose.env")


@pytest.fixture(scope="module")
def secrets(secrets_file):
    return read_env_file(secrets_file)


@pytest.fixture(scope="module")
def config(secrets_file):
    return compose_config(secrets_file)


def published_ports(service):
    """(host_ip, published, target) of each published port, in compose v1's short form
    ("127.0.0.1:9092:9092/tcp") or v2's long form (a mapping with host_ip)."""
    for p in service.get("ports", []):
        if isinstance(p, dict):
            yield str(p.get("host_ip", "")), str(p.get("published", "")), str(p.get("target", ""))
            continue
        parts = str(p).split("/", 1)[0].rsplit(":", 2)
        parts = [""] * (3 - len(parts)) + parts
        yield parts[0].strip("[]"), parts[1], parts[2]


def secret_values(node, path=()):
    """(path, value) of every scalar under a key naming a password, secret or key, and of the
    password in every URL (floe's catalog URI), anywhere in the config."""
    if isinstance(node, dict):
        for k, v in node.items():
            if SECRET_KEY.search(str(k)) and not isinstance(v, (dict, list)):
                yield path + (k,), "" if v is None else str(v)
            yield from secret_values(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if isinstance(v, str) and "=" in v and SECRET_KEY.search(v.split("=", 1)[0]):
                yield path + (v.split("=", 1)[0],), v.split("=", 1)[1]  # KEY=value lists
            yield from secret_values(v, path + (i,))
    elif isinstance(node, str) and "://" in node:
        try:
            password = urlsplit(node).password
        except ValueError:
            password = None
        if password is not None:
            yield path + ("<url password>",), password


def test_compose_file_is_valid_and_starts_in_order(config):
    services = config["services"]
    assert set(SERVICES) | set(ONE_SHOT) <= set(services), sorted(services)
    for name, port in SERVICES.items():
        published = {pub for _, pub, _ in published_ports(services[name])}
        assert str(port) in published, (name, services[name].get("ports"))
    floe = services["floe"]
    deps = floe["depends_on"]
    assert deps["kafka"]["condition"] == "service_healthy"
    assert deps["postgres"]["condition"] == "service_healthy"
    assert deps["minio-init"]["condition"] == "service_completed_successfully"
    assert deps["tables"]["condition"] == "service_completed_successfully"
    for name in ("kafka", "minio", "postgres", "trino", "floe"):
        assert "healthcheck" in services[name], name
    env = floe["environment"]
    assert env["FLOE__CATALOG__URI"].startswith("postgres://")
    assert env["FLOE__CATALOG__WAREHOUSE"].startswith("s3://")
    assert env["FLOE__S3__PATH_STYLE"] in ("true", True)
    assert "build" in floe and (ROOT / "Dockerfile").exists()


def test_the_loader_service_is_given_its_pipeline(config):
    """The image has no floe.toml and [[pipelines]] cannot come from FLOE__ variables:
    `floe run` without --topic and --table would refuse to start ("nothing to load")."""
    cmd = config["services"]["floe"]["command"]
    assert cmd[0] == "run", cmd
    assert cmd[cmd.index("--topic") + 1] == "events", cmd
    assert cmd[cmd.index("--table") + 1] == "lake.events", cmd


def test_trino_reads_the_catalog_and_warehouse_floe_writes(config):
    cfg = config
    env = cfg["services"]["floe"]["environment"]
    props = dict(l.split("=", 1) for l in (ROOT / "trino/etc/catalog/lake.properties").read_text().splitlines()
                 if l.strip() and not l.startswith("#"))
    assert props["connector.name"] == "iceberg"
    assert props["iceberg.catalog.type"] == "jdbc"
    assert props["iceberg.jdbc-catalog.catalog-name"] == env["FLOE__CATALOG__NAME"]
    assert props["iceberg.jdbc-catalog.default-warehouse-dir"] == env["FLOE__CATALOG__WAREHOUSE"]
    pg_db = env["FLOE__CATALOG__URI"].rsplit("/", 1)[1]
    assert props["iceberg.jdbc-catalog.connection-url"] == f"jdbc:postgresql://postgres:5432/{pg_db}"
    assert props["s3.endpoint"] == env["FLOE__S3__ENDPOINT"]
    assert props["s3.path-style-access"] == "true"
    mounts = cfg["services"]["trino"]["volumes"]
    assert any(str(m.get("target", m) if isinstance(m, dict) else m).find("/etc/trino") >= 0 for m in mounts)



def test_every_published_port_binds_to_loopback(config):
    ports = {name: list(published_ports(svc)) for name, svc in config["services"].items()
             if svc.get("ports")}
    assert set(SERVICES) <= set(ports), sorted(ports)
    open_ports = {name: p for name, p in ports.items()
                  if any(host_ip != "127.0.0.1" for host_ip, _, _ in p)}
    assert not open_ports, f"published beyond 127.0.0.1: {open_ports}"
    assert (config["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
            .startswith("HOST://127.0.0.1:9092,"))


def test_one_variable_exposes_the_ports_deliberately(secrets_file):
    cfg = compose_config(secrets_file, FLOE_BIND_ADDRESS="192.0.2.10",
                         FLOE_KAFKA_ADVERTISED_HOST="kafka.example.internal")
    for name, svc in cfg["services"].items():
        for host_ip, _, _ in published_ports(svc):
            assert host_ip == "192.0.2.10", (name, svc["ports"])
    assert (cfg["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
            .startswith("HOST://kafka.example.internal:9092,"))
    # Set but empty is not "all interfaces": it falls back to loopback.
    cfg = compose_config(secrets_file, FLOE_BIND_ADDRESS="")
    assert {ip for svc in cfg["services"].values() for ip, _, _ in published_ports(svc)} == {"127.0.0.1"}


def test_no_secret_has_a_known_default(config, secrets):
    found = list(secret_values(config["services"]))
    keys = {path[-1] for path, _ in found}
    for want in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "GF_SECURITY_ADMIN_PASSWORD",
                 "FLOE__S3__ACCESS_KEY_ID", "FLOE__S3__SECRET_ACCESS_KEY", "<url password>"):
        assert want in keys, (want, sorted(keys))
    weak = [(path, value) for path, value in found if value.strip().lower() in KNOWN_DEFAULTS]
    assert not weak, f"secrets with a well-known value: {weak}"
    # Each one is a value from the env file, not something written into docker-compose.yml.
    literal = [(path, value) for path, value in found if value not in secrets.values()]
    assert not literal, f"secrets not taken from the environment: {literal}"
    # And the file gives none of them a fallback: ${VAR:?message}, never ${VAR:-default}.
    refs = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}",
                      (ROOT / "docker-compose.yml").read_text())
    assert {name for name, _ in refs} <= set(STACK_VARS), refs
    secret_refs = [(name, rest) for name, rest in refs if name in SECRETS or SECRET_KEY.search(name)]
    assert {name for name, _ in secret_refs} == set(SECRETS), secret_refs
    defaulted = [(name, rest) for name, rest in secret_refs if not rest.startswith(":?")]
    assert not defaulted, f"secrets with a default in docker-compose.yml: {defaulted}"


def test_connected_services_take_the_same_secrets(config, secrets):
    svc = config["services"]
    pg, minio_user, minio_pw = (secrets[k] for k in ("POSTGRES_PASSWORD", "MINIO_ROOT_USER",
                                                     "MINIO_ROOT_PASSWORD"))
    assert svc["postgres"]["environment"]["POSTGRES_PASSWORD"] == pg
    assert svc["minio"]["environment"]["MINIO_ROOT_USER"] == minio_user
    assert svc["minio"]["environment"]["MINIO_ROOT_PASSWORD"] == minio_pw
    assert svc["minio-init"]["environment"]["MINIO_ROOT_USER"] == minio_user
    assert svc["minio-init"]["environment"]["MINIO_ROOT_PASSWORD"] == minio_pw
    for name in ["floe", "tables", "generator", "maintain-hourly", "maintain-daily"]:
        env = svc[name]["environment"]
        assert urlsplit(env["FLOE__CATALOG__URI"]).password == pg, name
        assert env["FLOE__S3__ACCESS_KEY_ID"] == minio_user, name
        assert env["FLOE__S3__SECRET_ACCESS_KEY"] == minio_pw, name
    assert svc["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == secrets["GRAFANA_PASSWORD"]
    # Trino's catalog reads its credentials from its environment, never from the file.
    trino_env = svc["trino"]["environment"]
    props = dict(l.split("=", 1) for l in (ROOT / "trino/etc/catalog/lake.properties").read_text().splitlines()
                 if l.strip() and not l.startswith("#"))
    creds = {k: v for k, v in props.items() if SECRET_KEY.search(k) or k.endswith("-user")}
    want = {"iceberg.jdbc-catalog.connection-password": "POSTGRES_PASSWORD",
            "s3.aws-access-key": "MINIO_ROOT_USER", "s3.aws-secret-key": "MINIO_ROOT_PASSWORD"}
    for key, var in want.items():
        assert creds.pop(key) == "${ENV:%s}" % var, key
        assert trino_env[var] == secrets[var], var
    assert creds == {"iceberg.jdbc-catalog.connection-user": "floe"}, creds


def test_compose_refuses_to_start_without_the_secrets(tmp_path, secrets):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    out = run_compose(empty)
    assert out.returncode != 0, "docker-compose config passed with no secrets set"
    assert any(var in out.stderr for var in SECRETS), out.stderr
    assert "scripts/compose-secrets" in out.stderr, out.stderr
    for var in SECRETS:
        for missing, value in (("unset", None), ("empty", "")):
            env_file = tmp_path / f"{var}-{missing}.env"
            env_file.write_text("".join(f"{k}={v}\n" for k, v in secrets.items()
                                        if k != var) + ("" if value is None else f"{var}=\n"))
            out = run_compose(env_file)
            assert out.returncode != 0, f"docker-compose config passed with {var} {missing}"
            assert var in out.stderr, (var, out.stderr)


def test_compose_secrets_writes_random_secrets_and_never_overwrites(tmp_path):
    script = ROOT / "scripts/compose-secrets"
    first, second = write_secrets(tmp_path / "a.env"), write_secrets(tmp_path / "b.env")
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    a, b = read_env_file(first), read_env_file(second)
    assert set(a) == set(ALL_SECRETS), a
    for var in ALL_SECRETS:
        # URL-safe (the catalog URI embeds POSTGRES_PASSWORD), long, different every time.
        assert re.fullmatch(r"[A-Za-z0-9._-]{16,}", a[var]), (var, a[var])
        assert a[var] != b[var], var
    before = first.read_text()
    write_secrets(first)
    assert first.read_text() == before
    # An existing file keeps its lines (even a last one without a newline); only what it
    # lacks is appended.
    mine = tmp_path / "mine.env"
    mine.write_text("# mine\nGRAFANA_PASSWORD=my-own-choice")
    out = subprocess.run([str(script), str(mine)], check=True, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    # A new POSTGRES_PASSWORD does not reach a database created before: the script says so.
    assert "postgres-data" in out.stderr, out.stderr
    text = mine.read_text()
    assert text.startswith("# mine\nGRAFANA_PASSWORD=my-own-choice\n"), text
    got = read_env_file(mine)
    assert set(got) == set(ALL_SECRETS) and got["GRAFANA_PASSWORD"] == "my-own-choice", got


def test_secrets_stay_out_of_git_and_the_image():
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "/.env" in ignored or ".env" in ignored, ignored
    assert ".env" in (ROOT / ".dockerignore").read_text().splitlines()
    tracked = subprocess.run(["git", "ls-files", ".env"], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True, check=True).stdout
    assert not tracked.strip(), tracked

def exported_metrics():
    names = set()
    for src in (ROOT / "crates").rglob("metrics.rs"):
        names |= set(re.findall(r'"(floe_[a-z_]+)"', src.read_text()))
    return names


def test_dashboard_charts_only_metrics_floe_exports():
    dash = json.loads((ROOT / "monitoring/grafana/dashboards/floe.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = set()
    for e in exprs:
        used |= {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"floe_[a-z_]+", e)}
    missing = used - exported_metrics()
    assert not missing, missing
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for want in ("throughput", "lag", "dead letters", "commit latency", "freshness", "files per partition"):
        assert want in titles, want


def test_readme_production_section_names_every_service_port_and_credential():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Production stack", 1)[1].split("\n## ", 1)[0]
    for name, port in SERVICES.items():
        assert name in section and str(port) in section, (name, port)
    for word in SECRETS + ("scripts/compose-secrets", "127.0.0.1", "FLOE_BIND_ADDRESS",
                           "docs/deployment.md"):
        assert word in section, word
    for old_default in ("floe-secret", "`admin` / `admin`", "`floe` / `floe`"):
        assert old_default not in section, old_default
    assert "scripts/stack" in section and "lake.lake.events" in section


def test_deployment_doc_says_how_to_run_and_expose_the_stack():
    doc = (ROOT / "docs/deployment.md").read_text()
    section = doc.split("## Running the compose stack", 1)[1].split("\n## ", 1)[0]
    for word in SECRETS + ("scripts/compose-secrets", ".env", "127.0.0.1", "FLOE_BIND_ADDRESS",
                           "FLOE_KAFKA_ADVERTISED_HOST", "TLS"):
        assert word in section, word


# --- docker-compose.rest.yml: the same stack on Apache Polaris (an Iceberg REST catalog) ------

def read_properties(path):
    return dict(l.split("=", 1) for l in (ROOT / path).read_text().splitlines()
                if l.strip() and not l.startswith("#"))


@pytest.fixture(scope="module")
def rest_config(secrets_file):
    return compose_config(secrets_file, REST)


def test_rest_stack_is_valid_and_switches_floe_to_polaris(rest_config, secrets):
    services = rest_config["services"]
    assert set(SERVICES) | set(ONE_SHOT) | {"polaris", "polaris-init"} <= set(services)
    assert "8181" in {pub for _, pub, _ in published_ports(services["polaris"])}
    assert "healthcheck" in services["polaris"]
    init = services["polaris-init"]
    assert init["depends_on"]["polaris"]["condition"] == "service_healthy"
    script = " ".join(init["command"])
    for call in ("/catalog/v1/oauth/tokens", "scope=PRINCIPAL_ROLE:ALL",
                 "/management/v1/catalogs", '"name": "lake"', '"pathStyleAccess": true',
                 '"endpoint": "http://minio:9000"', "s3://lake/warehouse",
                 "/catalogs/lake/catalog-roles/catalog_admin/grants", "CATALOG_MANAGE_CONTENT"):
        assert call in script, call
    bootstrap = services["polaris"]["environment"]["POLARIS_BOOTSTRAP_CREDENTIALS"]
    assert bootstrap == f"POLARIS,{secrets['POLARIS_CLIENT_ID']},{secrets['POLARIS_CLIENT_SECRET']}"
    for name in FLOE_SERVICES:
        svc = services[name]
        env = svc["environment"]
        assert env["FLOE__CATALOG__URI"] == "http://polaris:8181/api/catalog", name
        assert env["FLOE__CATALOG__WAREHOUSE"] == "lake", name
        assert env["FLOE__CATALOG__SCOPE"] == "PRINCIPAL_ROLE:ALL", name
        assert env["FLOE__CATALOG__CREDENTIAL"] == \
            f"{secrets['POLARIS_CLIENT_ID']}:{secrets['POLARIS_CLIENT_SECRET']}", name
        assert env["FLOE__S3__ENDPOINT"] == "http://minio:9000", name   # the base's S3 stays
        assert svc["depends_on"]["polaris-init"]["condition"] == "service_completed_successfully"
    # The JDBC stack is unchanged by the REST file's existence.
    assert "polaris" not in compose_config_plain(secrets)


def compose_config_plain(secrets):
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        env_file = Path(d) / "compose.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in secrets.items()))
        return compose_config(env_file)["services"]


def test_rest_trino_reads_the_catalog_floe_writes(rest_config, secrets):
    svc = rest_config["services"]
    env = svc["floe"]["environment"]
    props = read_properties("trino/etc/catalog-rest/lake.properties")
    assert props["connector.name"] == "iceberg"
    assert props["iceberg.catalog.type"] == "rest"
    assert props["iceberg.rest-catalog.uri"] == env["FLOE__CATALOG__URI"]
    assert props["iceberg.rest-catalog.warehouse"] == env["FLOE__CATALOG__WAREHOUSE"]
    assert props["iceberg.rest-catalog.security"] == "OAUTH2"
    assert props["iceberg.rest-catalog.oauth2.scope"] == env["FLOE__CATALOG__SCOPE"]
    assert props["iceberg.rest-catalog.oauth2.credential"] == \
        "${ENV:POLARIS_CLIENT_ID}:${ENV:POLARIS_CLIENT_SECRET}"
    assert props["s3.endpoint"] == env["FLOE__S3__ENDPOINT"]
    assert props["s3.path-style-access"] == "true"
    assert props["s3.aws-access-key"] == "${ENV:MINIO_ROOT_USER}"
    assert props["s3.aws-secret-key"] == "${ENV:MINIO_ROOT_PASSWORD}"
    trino = svc["trino"]
    for var in REST_SECRETS + ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert trino["environment"][var] == secrets[var], var
    mounts = [m if isinstance(m, str) else f"{m.get('source')}:{m.get('target')}"
              for m in trino["volumes"]]
    catalog = [m for m in mounts if m.split(":")[1] == "/etc/trino/catalog"]
    assert len(catalog) == 1 and catalog[0].split(":")[0].endswith("trino/etc/catalog-rest"), mounts
    assert trino["depends_on"]["polaris-init"]["condition"] == "service_completed_successfully"


def test_rest_stack_binds_to_loopback_unless_told(rest_config, secrets_file):
    open_ports = {name: list(published_ports(svc)) for name, svc in rest_config["services"].items()
                  if any(ip != "127.0.0.1" for ip, _, _ in published_ports(svc))}
    assert not open_ports, open_ports
    cfg = compose_config(secrets_file, REST, FLOE_BIND_ADDRESS="192.0.2.10")
    assert {ip for svc in cfg["services"].values() for ip, _, _ in published_ports(svc)} == \
        {"192.0.2.10"}


def test_rest_stack_has_no_default_secrets(rest_config, secrets):
    found = list(secret_values(rest_config["services"]))
    weak = [(path, value) for path, value in found if value.strip().lower() in KNOWN_DEFAULTS]
    assert not weak, weak
    literal = [(path, value) for path, value in found if value not in secrets.values()]
    assert not literal, literal
    text = (ROOT / "docker-compose.rest.yml").read_text()
    refs = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}", text)
    assert {name for name, _ in refs} <= set(STACK_VARS), refs
    secret_refs = [(name, rest) for name, rest in refs if name in ALL_SECRETS]
    assert set(REST_SECRETS) <= {name for name, _ in secret_refs}, secret_refs
    defaulted = [(name, rest) for name, rest in secret_refs if not rest.startswith(":?")]
    assert not defaulted, f"secrets with a default in docker-compose.rest.yml: {defaulted}"
    # No literal credentials for Polaris anywhere (its quickstart's root:s3cr3t, say).
    assert not re.search(r"(?i)s3cr3t|POLARIS,root,", text)


def test_rest_stack_refuses_to_start_without_its_secrets(tmp_path, secrets):
    for var in ALL_SECRETS:
        env_file = tmp_path / f"{var}.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in secrets.items() if k != var))
        out = run_compose(env_file, REST)
        assert out.returncode != 0, f"the REST stack's config passed without {var}"
        assert var in out.stderr and "scripts/compose-secrets" in out.stderr, (var, out.stderr)
    # The JDBC stack alone does not need Polaris's.
    env_file = tmp_path / "jdbc.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in secrets.items() if k in SECRETS))
    assert run_compose(env_file).returncode == 0
