"""navistore.server: waitress's settings follow Navistore's, and the tuning is in effect."""

from __future__ import annotations

import falcon

from navistore.node import largest_request
from navistore.server import SEND_BYTES, make_server, server_options
from navistore.settings import Settings


def test_waitress_is_tuned_from_the_settings():
    settings = Settings(threads=8, max_watchers=32, max_value_size=1024 * 1024)
    options = server_options(settings)
    assert options["threads"] == 40  # each waiting watch holds a thread of its own
    assert options["connection_limit"] > options["threads"] + 100
    assert options["max_request_body_size"] == 8 * 1024 * 1024 + 64 * 1024
    assert options["channel_timeout"] == 60  # slow clients are dropped
    assert options["max_request_header_size"] == 64 * 1024
    assert options["asyncore_use_poll"] is False  # select() is cheaper, and fds stay < 1024
    many = Settings(threads=256, max_watchers=1024)
    # select() cannot watch descriptors from 1024 up: poll once connections could get there
    assert server_options(many)["asyncore_use_poll"] is True
    big = Settings(max_value_size=32 * 1024 * 1024)
    # a replication batch may carry one value at the limit, in base64
    assert largest_request(big) >= 32 * 1024 * 1024 * 4 // 3
    assert server_options(big)["max_request_body_size"] == largest_request(big) + 64 * 1024


def test_send_bytes_is_in_effect():
    settings = Settings(port=0)
    server = make_server(falcon.App(), settings)
    try:
        # waitress deprecated send_bytes but honours it in 3.x, which pyproject pins: if a new
        # waitress drops it, this fails instead of GETs silently getting slower.
        assert server.adj.send_bytes == SEND_BYTES
        assert server.adj.threads == settings.threads + settings.max_watchers
    finally:
        server.close()
