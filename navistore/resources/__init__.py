"""The REST resources: parse the request, call the Node, set the response. Nothing else.

``read_json`` and ``query`` are public: plugins that mount routes of their own read JSON bodies
and query strings with them.
"""

from __future__ import annotations

import json

import falcon

from navistore import _http
from navistore.errors import InvalidRequest, ValueTooLarge


def query(req: falcon.Request, known: tuple[str, ...] = ()) -> dict[str, str]:
    """The request's query parameters, each decoded strictly and given once; 400 for a name not
    in ``known``, naming it and the ones the route takes. A route that writes should refuse what
    it does not take: ``POST /v1/batch?dry_run=true`` would otherwise write."""
    return _http.query(req.env, known)


def read_json(req: falcon.Request, limit: int) -> object:
    """The request's JSON body: 413 from its length when over ``limit`` bytes, 415 when it is
    not declared as JSON, 400 when it does not parse."""
    if req.content_type is None or req.content_type.split(";")[0].strip() != falcon.MEDIA_JSON:
        raise falcon.HTTPUnsupportedMediaType(
            title="Unsupported media type",
            description=f"send the body as {falcon.MEDIA_JSON}; got {req.content_type or 'none'}",
        )
    if req.content_length is not None and req.content_length > limit:
        raise ValueTooLarge(f"the body is {req.content_length} bytes; the limit is {limit} bytes")
    raw = req.bounded_stream.read(limit + 1)
    if len(raw) > limit:
        raise ValueTooLarge(f"the body is over the limit of {limit} bytes")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
