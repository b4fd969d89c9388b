"""Seed e-commerce events (as in the MinIO seed's SchemaDefinition) and malformed lines."""

import json
import random
import uuid
from datetime import datetime, timezone

BASE_MS = 1_742_199_657_865


def seed_event(rng: random.Random, i: int) -> dict:
    return {
        "eventGuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "timestamp": BASE_MS + i * 997 + rng.randint(0, 3_600_000),
        "country": f"country_{rng.randint(0, 49)}",
        "is_returning": rng.random() < 0.5,
        "user_id": f"user_id_{rng.randint(0, 999)}",
        "action": f"action_{rng.randint(0, 9)}",
        "device_type": f"device_type_{rng.randint(0, 2)}",
        "page": f"page_{rng.randint(0, 19)}",
        "category": f"category_{rng.randint(0, 29)}",
        "value": rng.random() * 100,
        "session_duration": rng.randint(0, 600),
    }


# (payload bytes, expected error kind) — each is a way real producers go wrong.
def malformed(rng: random.Random, i: int):
    e = seed_event(rng, i)
    kinds = [
        (b"not json at all", "malformed_json"),
        (b'{"eventGuid": "x", "timestamp": 1', "malformed_json"),
        (b"[1, 2, 3]", "not_an_object"),
        (b'"a string"', "not_an_object"),
        (json.dumps({**e, "value": "abc"}).encode(), "wrong_type"),
        (json.dumps({**e, "timestamp": "yesterday"}).encode(), "invalid_value"),
        (json.dumps({k: v for k, v in e.items() if k != "eventGuid"}).encode(), "missing_field"),
        (json.dumps({**e, "session_duration": 3_000_000_000}).encode(), "out_of_range"),
        (json.dumps(e).encode()[:-1] + b', "country": "dup"}', "duplicate_key"),
        (json.dumps(e).encode().replace(b"country_", b"country_\xff"), "invalid_utf8"),
        (json.dumps({**e, "is_returning": "yes"}).encode(), "wrong_type"),
        (json.dumps({**e, "eventGuid": None}).encode(), "missing_field"),
    ]
    return kinds[i % len(kinds)]


def expected_row(e: dict) -> dict:
    """The row floe must store for an accepted event."""
    return {
        "event_guid": e["eventGuid"],
        "event_ts": datetime.fromtimestamp(e["timestamp"] / 1000, tz=timezone.utc),
        "country": e["country"],
        "is_returning": e["is_returning"],
        "user_id": e["user_id"],
        "action": e["action"],
        "device_type": e["device_type"],
        "page": e["page"],
        "category": e["category"],
        "value": e["value"],
        "session_duration": e["session_duration"],
    }


def mixed_file(path, n_good: int, bad_every: int, seed: int):
    """Writes n_good events with malformed lines and blank lines mixed in.
    Returns (expected rows by guid, list of (bad payload, kind), non-blank line count)."""
    rng = random.Random(seed)
    good, bad, lines = {}, [], 0
    with open(path, "wb") as f:
        for i in range(n_good):
            e = seed_event(rng, i)
            if i % 7 == 3:  # ISO-8601 with an offset instead of epoch millis
                ts = datetime.fromtimestamp(e["timestamp"] / 1000, tz=timezone.utc)
                line = json.dumps({**e, "timestamp": ts.isoformat(timespec="milliseconds")})
            elif i % 11 == 5:  # unknown fields are ignored
                line = json.dumps({**e, "extra": {"nested": [1, 2]}, "utm": "x"})
            else:
                line = json.dumps(e)
            f.write(line.encode() + b"\n")
            lines += 1
            good[e["eventGuid"]] = expected_row(e)
            if i % bad_every == bad_every - 1:
                payload, kind = malformed(rng, i // bad_every)
                f.write(payload + b"\n")
                bad.append((payload, kind))
                lines += 1
            if i % 500 == 250:
                f.write(b"\n   \n")
    return good, bad, lines
