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
    mounted = {}
    for root in app._router._roots:
        stack = [root]
        while stack:
            node_ = stack.pop()
            if node_.resource is not None:
                methods = {m.lower() for m in falcon.HTTP_METHODS} - {"options"}
                answered = {m for m in methods if hasattr(node_.resource, f"on_{m}")}
                mounted[node_.uri_template.replace("{key:path}", "{key}")] = answered
            stack.extend(node_.children)
    assert set(mounted) == described
    for template, item in document["paths"].items():
        assert set(item) - {"parameters"} == mounted[template], template
        for method, operation in item.items():
            if method != "parameters":
                assert operation["responses"], (template, method)


def _example(schema: dict) -> str:
    """A value the schema allows, for a parameter sent alone."""
    if schema.get("type") == "integer":
        return str(schema.get("minimum", 1))
    return "true" if schema.get("type") == "boolean" else "a"


def _refusal(answer) -> str:
    """A 400's description; empty for any other answer."""
    return (answer.json or {}).get("description", "") if answer.status_code == 400 else ""


def test_each_route_takes_the_query_parameters_it_describes_and_refuses_others(node):
    # The routes list the names they take in their own code; this holds the two lists together.
    client = falcon.testing.TestClient(create_app(node))
    document = client.simulate_get("/openapi.json").json
    refusing = 0
    for template, item in document["paths"].items():
        path = template.replace("{key}", "k")
        for method, operation in item.items():
            if method == "parameters" or method == "head":  # HEAD: GET's names, and no body
                continue
            params = [p for p in operation.get("parameters", []) if p["in"] == "query"]
            described = sorted(p["name"] for p in params)
            body = b"v" if method == "put" else None
            where = f"{method.upper()} {template}"
            for param in params:
                sent = {param["name"]: _example(param["schema"])}
                answer = client.simulate_request(method.upper(), path, params=sent, body=body)
                said = _refusal(answer)
                assert "unknown query parameter" not in said, (where, param["name"], said)
            answer = client.simulate_request(method.upper(), path, query_string="zz=1", body=body)
            said = _refusal(answer)
            if "unknown query parameter 'zz'" not in said:
                # Only a route that writes nothing and takes nothing may ignore a stray name.
                assert method == "get" and not described, (where, answer.status_code, said)
                continue
            refusing += 1
            takes = said.partition("takes ")[2].split(" (")[0]
            taken = [] if takes == "no query parameters" else sorted(takes.split(", "))
            assert taken == described, where
    assert refusing >= 9


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
