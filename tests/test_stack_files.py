"""The compose stack's files agree with each other and with floe: docker-compose validates the
file, every service the README promises is there with its port, Trino's catalog points at the
catalog and warehouse floe uses, and the dashboard only charts metrics floe exports."""

import json
import re
import shutil
import subprocess

import pytest

from readers import ROOT

SERVICES = {  # service → host port the README names
    "kafka": 9092, "minio": 9000, "postgres": 5432, "trino": 8080, "floe": 9464,
    "prometheus": 9090, "grafana": 3000,
}
ONE_SHOT = ["minio-init", "tables", "generator", "maintain-hourly", "maintain-daily"]


def compose_config():
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not installed (scripts/test installs Debian's package)")
    out = subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), "config"], cwd=ROOT,
                         check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import yaml
    return yaml.safe_load(out.stdout)


def test_compose_file_is_valid_and_starts_in_order():
    cfg = compose_config()
    services = cfg["services"]
    assert set(SERVICES) | set(ONE_SHOT) <= set(services), sorted(services)
    for name, port in SERVICES.items():
        published = {str(p.get("published", "")) if isinstance(p, dict) else str(p).split(":")[0]
                     for p in services[name].get("ports", [])}
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


def test_trino_reads_the_catalog_and_warehouse_floe_writes():
    cfg = compose_config()
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
    for cred in ("floe-secret", "MINIO_ROOT_PASSWORD", "POSTGRES_PASSWORD", "GRAFANA_PASSWORD"):
        assert cred in section, cred
    assert "scripts/stack" in section and "lake.lake.events" in section
