"""Schemathesis hooks for tests/test_openapi.py: generated watches do not wait.

A watch may legally wait up to 600 s; the fuzzer would spend its whole time budget waiting.
tests/test_watch.py tests waiting; here the parameter's parsing is what is fuzzed.
"""

import schemathesis


@schemathesis.hook
def before_call(context, case, kwargs):
    wait = (case.query or {}).get("wait")
    if isinstance(wait, int) and wait > 0:
        case.query["wait"] = 0
