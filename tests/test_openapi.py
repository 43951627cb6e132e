"""/openapi.json describes every route; schemathesis finds no server error and no contradiction."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import falcon.testing

from navistore.app import create_app


def test_every_route_is_described(node):
    app = create_app(node)
    document = falcon.testing.TestClient(app).simulate_get("/openapi.json").json
    assert document["openapi"].startswith("3.")
    described = set(document["paths"])
    mounted = set()
    for root in app._router._roots:
        stack = [root]
        while stack:
            node_ = stack.pop()
            if node_.resource is not None:
                mounted.add(node_.uri_template.replace("{key:path}", "{key}"))
            stack.extend(node_.children)
    assert mounted == described
    for template, item in document["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                assert operation["responses"], (template, method)


def test_schemathesis_finds_no_server_error_and_no_contradiction(serve, tmp_path):
    server = serve("--max-watchers", "4")
    hooks = Path(__file__).parent / "support"
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        "PYTHONPATH": f"{hooks}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    checks = ",".join(
        [
            "not_a_server_error",
            "status_code_conformance",
            "content_type_conformance",
            "response_schema_conformance",
            "response_headers_conformance",
        ]
    )
    examples = os.environ.get("NAVISTORE_FUZZ_EXAMPLES", "100")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            checks,
            "--max-examples",
            examples,
            "--request-timeout",
            "10",
            "--seed",
            "1",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    summary = run.stdout[run.stdout.rfind("Test cases:") :]
    print(summary[:200])
    generated = int(re.search(r"(\d+) generated", summary).group(1))
    assert generated > 500 and f"{generated} passed" in summary
    assert server.request("GET", "/healthz").status == 200
