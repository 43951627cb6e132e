"""Records on the wire: JSON with base64 values, checked strictly on the way in."""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

from navistore import Record
from navistore.errors import InvalidRequest
from navistore.node import check_content_type, check_key
from navistore.record import parse_stamp


def encode(record: Record) -> dict[str, Any]:
    return {
        "key": record.key,
        "value": base64.b64encode(record.value or b"").decode("ascii"),
        "content_type": record.content_type,
        "stamp": record.stamp,
        "deleted": record.deleted,
        "expires_at": record.expires_at,
    }


def decode(data: Any, index: int) -> Record:
    """A record from its JSON form; InvalidRequest naming the index and the problem."""
    try:
        if not isinstance(data, dict):
            raise ValueError("a record must be a JSON object")
        key, stamp = data["key"], data["stamp"]
        if not isinstance(key, str) or not isinstance(stamp, str):
            raise ValueError("key and stamp must be strings")
        check_key(key)
        parse_stamp(stamp)
        value = base64.b64decode(data.get("value", ""), validate=True)
        content_type = data.get("content_type") or "application/octet-stream"
        deleted = data.get("deleted", False)
        expires_at = data.get("expires_at")
        if not isinstance(content_type, str) or not isinstance(deleted, bool):
            raise ValueError("content_type must be a string and deleted a boolean")
        if expires_at is not None and (
            isinstance(expires_at, bool)
            or not isinstance(expires_at, int | float)
            or not math.isfinite(expires_at)
        ):
            raise ValueError("expires_at must be a finite number or null")
        content_type = check_content_type(content_type)
    except (KeyError, ValueError, TypeError, binascii.Error, InvalidRequest) as exc:
        why = exc.description if isinstance(exc, InvalidRequest) else str(exc)
        raise InvalidRequest(f"record {index}: {why}") from None
    return Record(
        key=key,
        value=b"" if deleted else value,
        content_type=content_type,
        stamp=stamp,
        deleted=deleted,
        expires_at=None if expires_at is None else float(expires_at),
    )
