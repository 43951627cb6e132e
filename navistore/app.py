"""The Falcon app factory: routes in, domain errors turned into HTTP errors in one place."""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

import falcon

from navistore import errors
from navistore.accesslog import AccessLog, AccessLogWriter
from navistore.metrics import Metrics
from navistore.node import Node
from navistore.openapi import OpenApiResource, describe
from navistore.parking import PARK
from navistore.resources.batch import BatchResource
from navistore.resources.changes import ChangesResource
from navistore.resources.keys import KEY_ROUTE, KEYS_ROUTE, KeyResource, KeysResource
from navistore.resources.system import HealthResource, PluginsResource, StatusResource
from navistore.store import dump_json

log = logging.getLogger("navistore")

# Most specific first: the first class an error is an instance of decides its status.
_STATUS: tuple[tuple[type[errors.NavistoreError], str], ...] = (
    (errors.InvalidRequest, falcon.HTTP_400),
    (errors.KeyNotFound, falcon.HTTP_404),
    (errors.ChangesGone, falcon.HTTP_410),
    (errors.PreconditionFailed, falcon.HTTP_412),
    (errors.ValueTooLarge, falcon.HTTP_413),
    (errors.TooManyWatchers, falcon.HTTP_429),
    (errors.StoreFull, falcon.HTTP_507),
    (errors.StoreError, falcon.HTTP_503),
    (errors.NavistoreError, falcon.HTTP_500),
)


def _domain_error(req: falcon.Request, resp: falcon.Response, exc: Exception, params: Any) -> None:
    """Answer a NavistoreError with its status and a JSON body that says what went wrong."""
    assert isinstance(exc, errors.NavistoreError)
    status = next(code for cls, code in _STATUS if isinstance(exc, cls))
    body: dict[str, Any] = {"title": exc.title, "description": exc.description}
    if exc.index is not None:
        body["index"] = exc.index
    if exc.retry_after is not None:
        resp.set_header("Retry-After", str(exc.retry_after))
    if status == falcon.HTTP_500:
        log.error("internal error on %s %s: %s", req.method, req.path, exc)
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = json.dumps(body).encode()


def _serialize_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    """Falcon's own errors (404, 405, bad media...) as JSON, whatever the client accepts."""
    body = exc.to_dict()
    if "description" not in body:
        if exc.status_code == 404:
            body["description"] = f"no route matches {req.path}; GET /openapi.json lists the routes"
        elif exc.status_code == 405:
            allowed = dict(exc.headers or {}).get("Allow", "")
            body["description"] = f"{req.method} is not allowed on {req.path}; allowed: {allowed}"
        else:
            body["description"] = body.get("title", "")
    resp.content_type = falcon.MEDIA_JSON
    resp.data = json.dumps(body).encode()


class TokenAuth:
    """Require ``Authorization: Bearer <token>`` on ``/v1``, compared in constant time.

    A resource whose ``navistore_auth`` attribute is ``"peer"`` (the replication endpoints) takes
    the peer token instead, or the client token when no peer token is set. The read token, when
    set, passes GET and HEAD on the others, and gets 403 on anything else (as a Consul ACL token
    with read on the keys, or an etcd user with a read-only role).
    """

    def __init__(self, node: Node) -> None:
        self._node = node
        self._of: Any = None  # the Settings the tokens below were taken from
        self._tokens: tuple[bytes | None, bytes | None, bytes | None] = (None, None, None)

    def _current(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """(token, peer token, read token), encoded: taken again when the node's settings are
        new (``navistore serve`` re-reads the token files on SIGHUP)."""
        settings = self._node.settings
        if settings is not self._of:
            client = settings.token.encode() if settings.token else None
            peer = settings.peer_token.encode() if settings.peer_token else client
            reader = settings.read_token.encode() if settings.read_token else None
            self._tokens, self._of = (client, peer, reader), settings
        return self._tokens

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, params: dict
    ) -> None:
        if not req.path.startswith("/v1"):
            return
        park = req.env.get(PARK)
        if park is not None and park.deadline is not None:
            return  # a watch held since it was let in: a token rotated meanwhile lets it stay
        client, peer_token, reader = self._current()
        peer = getattr(resource, "navistore_auth", "client") == "peer"
        expected = peer_token if peer else client
        if expected is None:
            return
        scheme, _, credential = (req.get_header("Authorization") or "").partition(" ")
        given = credential.strip().encode("utf-8", "replace")
        bearer = scheme.lower() == "bearer"
        if bearer and hmac.compare_digest(given, expected):
            return
        if reader is not None and not peer and bearer and hmac.compare_digest(given, reader):
            if req.method in ("GET", "HEAD"):
                return
            raise falcon.HTTPForbidden(
                title="Forbidden",
                description=f"the read token may read (GET, HEAD), not {req.method} "
                f"{req.path}; writing needs the token",
            )
        which = "the peer token" if peer else "the token"
        raise falcon.HTTPUnauthorized(
            title="Unauthorized",
            description=f"{req.path} needs 'Authorization: Bearer <token>' with {which}",
            challenges=['Bearer realm="navistore"'],
        )


def create_app(node: Node | None = None, **settings: Any) -> falcon.App:
    """Build the Falcon app for ``node``.

    Without a node (``waitress-serve --call navistore:create_app``), one is built from the
    ``NAVISTORE_*`` environment (and ``settings`` given as keyword arguments), and started.
    """
    if node is None:
        from navistore.server import configure_logging, pin_cpus
        from navistore.settings import load_settings

        loaded = load_settings(flags=settings)
        if loaded.cpus:
            pin_cpus(loaded.cpus)
        node = Node(loaded)
        configure_logging(node.settings.log_format)  # run as a server, by waitress-serve
        node.start()
    metrics = Metrics(node)
    middleware: list[Any] = [metrics]
    if node.settings.access_log:
        # Off by default, as in etcd and Consul: a line per request costs about 8% of GET
        # throughput (bench/load.py); /metrics counts requests by route and status anyway.
        middleware.append(
            AccessLog(AccessLogWriter(json_format=node.settings.log_format == "json"))
        )
    if node.settings.token or node.settings.peer_token:
        middleware.insert(1, TokenAuth(node))
    app = falcon.App(middleware=middleware)
    app.req_options.auto_parse_qs_csv = False
    # Compact JSON, and no cycle check (bodies are built here, from plain data): a listing page
    # of 100 keys encodes in 59 us instead of 68, and is 7% smaller.
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = falcon.media.JSONHandler(dumps=dump_json)
    app.set_error_serializer(_serialize_error)

    def domain_error(
        req: falcon.Request, resp: falcon.Response, exc: Exception, params: Any
    ) -> None:
        if isinstance(exc, errors.StoreError):
            metrics.store_errors.labels(type(exc).__name__).inc()
        _domain_error(req, resp, exc, params)

    app.add_error_handler(errors.NavistoreError, domain_error)
    plugin_routes = [
        route for routes in node.plugins.hook.navistore_routes(node=node) for route in routes or []
    ]
    routes = [
        (KEYS_ROUTE, KeysResource(node)),
        (f"{KEY_ROUTE}{{key:path}}", KeyResource(node)),
        ("/v1/changes", ChangesResource(node)),
        ("/v1/batch", BatchResource(node)),
        ("/v1/status", StatusResource(node)),
        ("/v1/plugins", PluginsResource(node)),
        ("/healthz", HealthResource(node)),
        ("/metrics", metrics),
        *plugin_routes,
        ("/openapi.json", OpenApiResource(describe(plugin_routes))),
    ]
    for template, resource in routes:
        _answer_head(resource)
        app.add_route(template, resource)
    return app


def _answer_head(resource: Any) -> None:
    """Give a resource that answers GET but not HEAD its GET as HEAD, as HTTP asks of every
    server (RFC 9110, 9.3.2): a load balancer's health check may send HEAD /healthz. Falcon
    drops the body of a HEAD answer and keeps the Content-Length GET's body would have had."""
    if hasattr(resource, "on_get") and not hasattr(resource, "on_head"):
        resource.on_head = resource.on_get
