"""floe under hostile operators and inputs (issue 23): secrets never printed."""

from readers import Lake


def test_a_catalog_password_in_the_uri_query_is_never_printed(tmp_path, floe_bin):
    secret = "s3cr3t-Pa55"
    uri = f"postgres://floe@127.0.0.1:1/floe?sslmode=disable&password={secret}"
    lake = Lake(floe_bin, tmp_path, uri, f"{tmp_path}/wh")
    shown = lake.run("--print-config")
    assert secret not in shown.stdout + shown.stderr, shown.stdout
    assert "password=***" in shown.stdout, shown.stdout
    # A connection error names the catalog without its password.
    failed = lake.run("table", "list", check=False, timeout=120)
    assert failed.returncode != 0
    assert secret not in failed.stdout + failed.stderr, failed.stderr
    assert "127.0.0.1:1" in failed.stderr, failed.stderr
