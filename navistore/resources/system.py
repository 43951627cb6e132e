"""``/healthz``, ``/v1/status`` and ``/v1/plugins``."""

from __future__ import annotations

import falcon

from navistore.node import Node


class HealthResource:
    def __init__(self, node: Node) -> None:
        self.node = node

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            self.node.last_seq()
        except Exception as exc:  # any failure of the store means "not healthy", never a 500
            resp.status = falcon.HTTP_503
            resp.media = {
                "status": "unavailable",
                "description": f"the store does not answer: {exc}",
            }
            return
        resp.media = {"status": "ok"}


class StatusResource:
    def __init__(self, node: Node) -> None:
        self.node = node

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.node.status()


class PluginsResource:
    def __init__(self, node: Node) -> None:
        self.node = node

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.node.plugins_report()
