"""AWS SigV4 on a REST catalog (as Glue's and S3 Tables' Iceberg endpoints want it): the gate
in front of the REST server checks every request's signature with botocore (the AWS SDK's
own signer, independent of floe's reqsign) and refuses what does not verify."""

import hashlib
import re
from collections import Counter

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from events import mixed_file

KEY, SECRET = "AKIDFLOETEST", "floe-test-secret-key"
AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
                  r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[^,]+), ?"
                  r"Signature=(?P<sig>[0-9a-f]{64})$")


def sigv4_verifier(endpoint, region, service, failures):
    """A gate check: None when the request carries a valid SigV4 signature by KEY/SECRET for
    `region` and `service`, else why not (also appended to `failures`)."""

    def verify(seen):
        why = _why_not(seen)
        if why:
            failures.append(f"{seen.method} {seen.path}: {why}")
        return why

    def _why_not(seen):
        m = AUTH.match(seen.headers.get("Authorization") or "")
        if not m:
            return f"no SigV4 Authorization header: {seen.headers.get('Authorization')!r}"
        if (m["key"], m["region"], m["service"]) != (KEY, region, service):
            return f"signed for {m['key']}/{m['region']}/{m['service']}"
        body = seen.body or b""
        if seen.headers.get("x-amz-content-sha256") != hashlib.sha256(body).hexdigest():
            return "x-amz-content-sha256 is not the body's SHA-256"
        signed = m["signed"].split(";")
        if "host" not in signed or "x-amz-date" not in signed:
            return f"host and x-amz-date must be signed: {signed}"
        query = "&".join(f"{k}={v}" for k, vs in seen.query.items() for v in vs)
        url = f"{endpoint}{seen.path}" + (f"?{query}" if query else "")
        req = AWSRequest(method=seen.method, url=url, data=body,
                         headers={h: seen.headers.get(h) for h in signed})
        req.context["timestamp"] = seen.headers.get("x-amz-date")
        signer = SigV4Auth(Credentials(KEY, SECRET), service, region)
        want = signer.signature(signer.string_to_sign(req, signer.canonical_request(req)), req)
        return None if want == m["sig"] else "signature does not verify"

    return verify


def test_every_request_is_signed_and_verifies(rest_lake, tmp_path):
    lake, gate = rest_lake, rest_lake.rest_gate
    failures = []
    gate.verify = sigv4_verifier(gate.endpoint, "eu-west-1", "glue", failures)
    lake.extra_env.update({
        "FLOE__CATALOG__SIGV4__ENABLED": "true",
        "FLOE__CATALOG__SIGV4__SERVICE": "glue",
        "FLOE__CATALOG__SIGV4__REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        # Nothing from this machine's AWS set-up.
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    good, _, _ = mixed_file(tmp_path / "e.jsonl", n_good=3_000, bad_every=10**9, seed=5)
    lake.run("table", "create", "--all")
    lake.run("load", "--table", "lake.events", "--input", tmp_path / "e.jsonl",
             "--max-rows", "1000")
    assert not failures, failures[:3]
    commits = [s for s in gate.commits() if s.status == 200]
    assert len(commits) >= 3, [s.status for s in gate.commits()]
    assert all(s.headers.get("Authorization").startswith("AWS4-HMAC-SHA256") for s in commits)
    verify, gate.verify = gate.verify, None  # PyIceberg does not sign
    rows = lake.pyiceberg_table("lake.events").scan().to_arrow()
    assert Counter(rows.column("event_guid").to_pylist()) == Counter(good.keys())
    gate.verify = verify

    # A wrong secret is refused by the server, and floe says so without the secret.
    lake.extra_env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    failures.clear()
    p = lake.run("table", "list", check=False)
    assert p.returncode != 0
    assert "403" in p.stderr and "signature does not verify" in p.stderr, p.stderr
    assert "not-the-secret" not in p.stderr + p.stdout


def test_sigv4_keeps_a_bearer_token_as_original_authorization(rest_lake, tmp_path):
    lake, gate = rest_lake, rest_lake.rest_gate
    failures = []
    gate.verify = sigv4_verifier(gate.endpoint, "us-east-1", "execute-api", failures)
    lake.extra_env.update({
        "FLOE__CATALOG__SIGV4__ENABLED": "true",
        "FLOE__CATALOG__TOKEN": "tok-123",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    lake.run("table", "create", "lake.events")
    assert not failures, failures[:3]
    seen = gate.seen()
    assert seen and all(s.headers.get("Original-Authorization") == "Bearer tok-123" for s in seen)


def test_sigv4_without_a_region_says_what_to_set(rest_lake, tmp_path):
    lake = rest_lake
    lake.extra_env.update({"FLOE__CATALOG__SIGV4__ENABLED": "true", "AWS_REGION": "",
                           "AWS_DEFAULT_REGION": ""})
    p = lake.run("table", "list", check=False)
    assert p.returncode != 0 and "catalog.sigv4.region" in p.stderr, p.stderr
