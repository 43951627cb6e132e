"""The baseline for bench/load.py: a stub Falcon app on waitress, run as `navistore serve` is.

It keeps values in a dict and answers the same shapes as Navistore (a value with an ETag, a small
JSON body for a write, a JSON page of 100 keys), with nothing behind: the ceiling of the stack.

    python bench/stub.py --port 9000 --threads 8 [--cpus 1]
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

import falcon

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from navistore.server import make_server, pin_cpus, poll_once  # noqa: E402
from navistore.settings import Settings, load_settings  # noqa: E402


class Keys:
    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.counter = 0

    def on_get(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        value = self.values.get(key)
        if value is None:
            raise falcon.HTTPNotFound()
        resp.etag = '"0000000000000000-stub"'
        resp.content_type = "application/octet-stream"
        resp.data = value

    def on_put(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        value = req.bounded_stream.read()
        with self.lock:
            self.counter += 1
            created = key not in self.values
            self.values[key] = value
        etag = f'"{self.counter:016x}-stub"'
        resp.status = falcon.HTTP_201 if created else falcon.HTTP_200
        resp.etag = etag
        resp.media = {"key": key, "etag": etag}


class Listing:
    def __init__(self, keys: Keys) -> None:
        self.keys = keys

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        names = sorted(self.keys.values)[:100]
        resp.media = {
            "keys": [
                {"key": k, "etag": '"0-stub"', "size": 100, "content_type": "x", "expires_at": None}
                for k in names
            ],
            "next": names[-1] if names else None,
        }


def make_app() -> falcon.App:
    keys = Keys()
    app = falcon.App()
    app.add_route("/v1/keys/{key:path}", keys)
    app.add_route("/v1/keys", Listing(keys))
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--cpus", default="", help="as navistore serve --cpus")
    args = parser.parse_args()
    if args.cpus:
        pin_cpus(load_settings(flags={"cpus": args.cpus}, environ={}).cpus)
    app = make_app()
    settings = Settings(port=args.port, threads=args.threads)
    server = make_server(app, settings)
    print(f"stub serving on http://127.0.0.1:{server.effective_port}", file=sys.stderr, flush=True)
    while True:  # the loop navistore serve turns (navistore.eventloop where there is epoll)
        poll_once(server, 0.2)


if __name__ == "__main__":
    main()
