"""An independent oracle for the seed event rules (written from the table definition, not
from floe's decoder): which payloads must load, and the row each must become."""

import json
from datetime import datetime, timezone

INT32 = (-2**31, 2**31 - 1)


def expected_row(payload: bytes):
    """The row for a payload that must load, or None if it must be dead-lettered."""
    try:
        text = payload.decode("utf-8")
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(obj, dict):
        return None
    guid, ts = obj.get("eventGuid"), obj.get("timestamp")
    if not isinstance(guid, str) or isinstance(ts, bool) or not isinstance(ts, int):
        return None
    value, dur = obj.get("value"), obj.get("session_duration")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return None
    if dur is not None and (isinstance(dur, bool) or not isinstance(dur, int) or not INT32[0] <= dur <= INT32[1]):
        return None
    ret = obj.get("is_returning")
    if ret is not None and not isinstance(ret, bool):
        return None
    for k in ("country", "user_id", "action", "device_type", "page", "category"):
        if obj.get(k) is not None and not isinstance(obj[k], str):
            return None
    return {
        "event_guid": guid,
        "event_ts": datetime.fromtimestamp(ts / 1000, tz=timezone.utc),
        "country": obj.get("country"), "is_returning": ret, "user_id": obj.get("user_id"),
        "action": obj.get("action"), "device_type": obj.get("device_type"),
        "page": obj.get("page"), "category": obj.get("category"),
        "value": float(value) if value is not None else None, "session_duration": dur,
    }


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key")
    return dict(pairs)
