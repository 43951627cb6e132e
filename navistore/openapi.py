"""The OpenAPI 3 description of the REST API, served at ``GET /openapi.json``.

Plugin resources add their own paths: a resource with an ``openapi`` attribute (a Path Item
object) is described under the route it is mounted on.
"""

from __future__ import annotations

import copy
from typing import Any

import falcon

from navistore._version import __version__
from navistore.limits import (
    DEFAULT_LIMIT,
    MAX_BATCH_OPS,
    MAX_CONTENT_TYPE,
    MAX_KEY_BYTES,
    MAX_LIMIT,
    MAX_TTL,
)


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def errors(*codes: int) -> dict[str, Any]:
    """Response objects for error statuses, all with the JSON error body."""
    text = {
        400: (
            "Malformed request: the description names the problem and the limit (a query "
            "parameter the route does not list is refused)"
        ),
        401: "A token is configured and the request did not carry it",
        403: "The request carried the read token, which may only read (GET, HEAD)",
        404: "No such key (absent, deleted or expired), or no such route",
        405: "The route has no such method",
        410: "The change feed no longer reaches back to since: resync from a listing",
        412: "A precondition (If-Match, If-None-Match, if_match, if_none_match) failed",
        413: "The value or body is over its limit",
        415: "The body is not declared as application/json",
        429: "Every watcher slot is taken; retry after Retry-After seconds",
        503: "The store is busy (Retry-After) or does not answer",
        507: "The store's disk is full",
    }
    return {str(code): _error(text[code]) for code in codes}


_COMMON = (400, 401, 405, 503, 507)
_WRITES = (403, *_COMMON)  # what writes answer besides: the read token may not
_ETAG = {"description": "The version: the quoted stamp", "schema": {"type": "string"}}
_INDEX = {"description": "The store's newest seq", "schema": {"type": "integer"}}
_EXPIRES = {
    "description": "when the key expires, in seconds since the epoch (absent: it does not)",
    "schema": {"type": "number"},
}
_KEY = {
    "name": "key",
    "in": "path",
    "required": True,
    "description": f"1 to {MAX_KEY_BYTES} bytes of UTF-8, percent-encoded; no control characters",
    "schema": {"type": "string", "minLength": 1, "pattern": "^[^\\x00-\\x1f\\x7f]+$"},
}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


_ETAG_LIST = r'^(\*|(W/)?"[\x21\x23-\x7e]*"( *, *(W/)?"[\x21\x23-\x7e]*")*)$'


def _header(name: str, description: str, schema: dict | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string", "pattern": _ETAG_LIST},
    }


def _json(schema: dict[str, Any], description: str, headers: dict | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        answer["headers"] = headers
    return answer


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_LIMIT = _query(
    "limit",
    f"page size, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})",
    {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
)

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["title", "description"],
        "properties": {
            "title": {"type": "string"},
            "description": {"type": "string"},
            "index": {"type": "integer", "description": "the failing operation of a batch"},
        },
    },
    "Written": {
        "type": "object",
        "required": ["key", "etag"],
        "properties": {"key": {"type": "string"}, "etag": {"type": "string"}},
    },
    "Deleted": {
        "type": "object",
        "required": ["key", "deleted"],
        "properties": {"key": {"type": "string"}, "deleted": {"type": "boolean"}},
    },
    "Listing": {
        "type": "object",
        "required": ["keys", "next"],
        "properties": {
            "keys": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["key", "etag", "size", "content_type", "expires_at"],
                    "properties": {
                        "key": {"type": "string"},
                        "etag": {"type": "string"},
                        "size": {"type": "integer", "minimum": 0},
                        "content_type": {"type": "string"},
                        "expires_at": {"type": ["number", "null"]},
                        "value": {
                            "type": "string",
                            "contentEncoding": "base64",
                            "description": "the value, with values=true only",
                        },
                    },
                },
            },
            "next": {"type": ["string", "null"]},
            "prefixes": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Changes": {
        "type": "object",
        "required": ["changes", "last_seq"],
        "properties": {
            "changes": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["seq", "key", "etag", "deleted"],
                    "properties": {
                        "seq": {"type": "integer"},
                        "key": {"type": "string"},
                        "etag": {"type": "string"},
                        "deleted": {"type": "boolean"},
                        "content_type": {
                            "type": ["string", "null"],
                            "description": "with values=true; null for a deletion",
                        },
                        "expires_at": {"type": ["number", "null"]},
                        "value": {
                            "type": ["string", "null"],
                            "contentEncoding": "base64",
                            "description": "with values=true; null for a deletion",
                        },
                    },
                },
            },
            "last_seq": {"type": "integer"},
        },
    },
    "BatchRequest": {
        "type": "object",
        "required": ["ops"],
        "additionalProperties": False,
        "properties": {
            "ops": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_BATCH_OPS,
                "items": {
                    "type": "object",
                    "required": ["op", "key"],
                    "additionalProperties": False,
                    "properties": {
                        "op": {
                            "enum": ["put", "delete", "check"],
                            "description": "check: hold the key to if_match or if_none_match, "
                            "write nothing (a backend with the checks capability)",
                        },
                        "key": {"type": "string", "minLength": 1},
                        "value": {"type": "string", "format": "byte"},
                        "content_type": {
                            "type": "string",
                            "maxLength": MAX_CONTENT_TYPE,
                            "pattern": "^[ -~]*$",  # printable ASCII: it goes into a header
                        },
                        "ttl": {"type": "integer", "minimum": 1, "maximum": MAX_TTL},
                        "if_match": {"type": "string"},
                        "if_none_match": {"enum": ["*"]},
                    },
                },
            }
        },
    },
    "BatchResult": {
        "type": "object",
        "required": ["results"],
        "properties": {
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["key", "etag"],
                    "properties": {
                        "key": {"type": "string"},
                        "etag": {
                            "type": ["string", "null"],
                            "description": "what the key holds now; a check of an absent key: null",
                        },
                    },
                },
            }
        },
    },
    "Status": {
        "type": "object",
        "required": ["node_id", "store_id", "version", "last_seq", "backend", "replicator"],
        "properties": {
            "node_id": {"type": "string"},
            "store_id": {"type": "string"},
            "version": {"type": "string"},
            "last_seq": {"type": "integer"},
            "backend": {"type": "string"},
            "replicator": {"type": ["string", "null"]},
            "disk_bytes": {
                "type": ["integer", "null"],
                "description": "what the store takes on disk; null when the backend cannot say",
            },
        },
    },
}

_PATHS: dict[str, Any] = {
    "/v1/keys/{key}": {
        "parameters": [_KEY],
        "get": {
            "summary": "Read a value",
            "parameters": [_header("If-None-Match", "an etag list or *: 304 while it matches")],
            "responses": {
                "200": {
                    "description": "The value, byte for byte, with its stored Content-Type",
                    "headers": {"ETag": _ETAG, "X-Navistore-Expires-At": _EXPIRES},
                    "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                },
                "304": {"description": "Not modified", "headers": {"ETag": _ETAG}},
                **errors(404, *_COMMON),
            },
        },
        "head": {
            "summary": "Read a value's headers",
            "parameters": [_header("If-None-Match", "an etag list or *: 304 while it matches")],
            "responses": {
                "200": {
                    "description": "As GET, without the body",
                    "headers": {"ETag": _ETAG, "X-Navistore-Expires-At": _EXPIRES},
                },
                "304": {"description": "Not modified", "headers": {"ETag": _ETAG}},
                "400": {"description": "Malformed request (no body on HEAD)"},
                "401": {"description": "Token required (no body on HEAD)"},
                "404": {"description": "No such key (no body on HEAD)"},
                "405": {"description": "No such method (no body on HEAD)"},
                "503": {"description": "Store busy (no body on HEAD)"},
                "507": {"description": "Disk full (no body on HEAD)"},
            },
        },
        "put": {
            "summary": "Write a value (201 created, 200 replaced)",
            "parameters": [
                _query(
                    "ttl",
                    f"seconds to live, 1 to {MAX_TTL}",
                    {"type": "integer", "minimum": 1, "maximum": MAX_TTL},
                ),
                _header("If-Match", "an etag (or list) or *: write only over that version"),
                _header("If-None-Match", "*: write only if the key is absent", {"enum": ["*"]}),
            ],
            "requestBody": {
                "required": False,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            },
            "responses": {
                "200": _json(_ref("Written"), "Replaced", {"ETag": _ETAG}),
                "201": _json(_ref("Written"), "Created", {"ETag": _ETAG}),
                **errors(412, 413, *_WRITES),
            },
        },
        "delete": {
            "summary": "Delete a key (a tombstone, which replicates)",
            "parameters": [_header("If-Match", "an etag (or list) or *: delete only that version")],
            "responses": {"200": _json(_ref("Deleted"), "Deleted"), **errors(404, 412, *_WRITES)},
        },
    },
    "/v1/keys": {
        "get": {
            "summary": "List keys in key order (bytewise UTF-8), a page at a time",
            "parameters": [
                _query("prefix", "only keys starting with this", {"type": "string"}),
                _query(
                    "after",
                    "only keys after this one (the previous page's next)",
                    {"type": "string"},
                ),
                _LIMIT,
                _query(
                    "separator",
                    "fold keys below the next separator into prefixes",
                    {"type": "string"},
                ),
                _query(
                    "values",
                    "true: each entry carries its value (base64), the page read at one moment "
                    "and cut before 4 MiB of values; takes no separator",
                    {"type": "boolean", "default": False},
                ),
            ],
            "responses": {
                "200": _json(_ref("Listing"), "A page of keys", {"X-Navistore-Index": _INDEX}),
                **errors(*_COMMON),
            },
        },
        "delete": {
            "summary": "Delete every key under a prefix (an empty prefix needs all=true)",
            "parameters": [
                _query("prefix", "the keys to delete", {"type": "string"}),
                _query("all", "true to allow an empty prefix", {"type": "boolean"}),
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["deleted"],
                        "properties": {"deleted": {"type": "integer"}},
                    },
                    "How many keys were deleted",
                ),
                **errors(*_WRITES),
            },
        },
    },
    "/v1/batch": {
        "post": {
            "summary": (
                f"Up to {MAX_BATCH_OPS} writes, deletes and checks, all or nothing, at most 8 MiB"
            ),
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("BatchRequest")}},
            },
            "responses": {
                "200": _json(_ref("BatchResult"), "Every operation committed"),
                **errors(412, 413, 415, *_WRITES),
            },
        }
    },
    "/v1/changes": {
        "get": {
            "summary": "The change feed (tombstones included); with wait, a watch",
            "parameters": [
                _query("since", "changes after this seq", {"type": "integer", "minimum": 0}),
                _query("prefix", "only keys under this prefix", {"type": "string"}),
                _query("key", "only this exact key (not with prefix)", {"type": "string"}),
                _LIMIT,
                _query(
                    "wait",
                    "hold up to this many seconds for a change",
                    {"type": "integer", "minimum": 0, "maximum": 600},
                ),
                _query(
                    "values",
                    "true: each change carries what the key holds since (base64), the page cut "
                    "before 4 MiB of values",
                    {"type": "boolean", "default": False},
                ),
            ],
            "responses": {
                "200": _json(_ref("Changes"), "Changes after since", {"X-Navistore-Index": _INDEX}),
                **errors(410, 429, *_COMMON),
            },
        }
    },
    "/v1/status": {
        "get": {
            "summary": "This node",
            "responses": {
                "200": _json(_ref("Status"), "Node and store ids, version, seq"),
                **errors(*_COMMON),
            },
        }
    },
    "/v1/plugins": {
        "get": {
            "summary": "The installed plugins, as `navistore plugins` lists them",
            "responses": {
                "200": _json({"type": "object"}, "Plugins and the active ones"),
                **errors(*_COMMON),
            },
        }
    },
    "/healthz": {
        "get": {
            "summary": "Whether the store answers (never needs a token)",
            "responses": {
                "200": _json(
                    {"type": "object", "properties": {"status": {"const": "ok"}}}, "Healthy"
                ),
                "503": _json({"type": "object"}, "The store does not answer"),
                "405": _error("No such method"),
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "responses": {
                "200": {
                    "description": "Prometheus text",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "405": _error("No such method"),
            },
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This description",
            "responses": {
                "200": _json({"type": "object"}, "OpenAPI 3.1"),
                "405": _error("No such method"),
            },
        }
    },
}


def _head(get: dict[str, Any]) -> dict[str, Any]:
    """The HEAD of a route that answers GET (``navistore.app`` gives it one): GET's parameters
    and answers, without their bodies."""
    head = {key: value for key, value in get.items() if key not in ("summary", "responses")}
    head["summary"] = f"{get.get('summary', 'As GET')}: headers only"
    head["responses"] = {
        status: {
            key: value for key, value in answer.items() if key not in ("content", "description")
        }
        | {"description": f"{answer.get('description', '')} (no body on HEAD)"}
        for status, answer in get["responses"].items()
    }
    return head


def describe(plugin_routes: list[tuple[str, Any]]) -> dict[str, Any]:
    """The OpenAPI document: the core's paths, and those of plugin resources that describe
    themselves."""
    paths = copy.deepcopy(_PATHS)
    for template, resource in plugin_routes:
        item = getattr(resource, "openapi", None)
        if item:
            paths[template] = copy.deepcopy(item)
    for item in paths.values():
        if "get" in item and "head" not in item:
            item["head"] = _head(item["get"])
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Navistore",
            "version": __version__,
            "description": "A key-value store that speaks HTTP.",
            "license": {"name": "GPL-2.0-or-later", "identifier": "GPL-2.0-or-later"},
        },
        "paths": paths,
        "components": {
            "schemas": copy.deepcopy(_SCHEMAS),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


class OpenApiResource:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.document
