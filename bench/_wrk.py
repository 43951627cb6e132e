"""wrk, the load generator the benchmarks drive servers with: install, run, parse."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass
class Result:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int

    def row(self) -> str:
        rate = f"{self.requests_per_second:10,.0f} req/s"
        return f"{rate}  p50 {self.p50_ms:7.2f} ms  p99 {self.p99_ms:7.2f} ms"


def ensure_wrk() -> str:
    """The wrk binary; installed from the system packages when missing (needs root)."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("wrk is not installed: apt-get install wrk (as root)")
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("apt-get install wrk did not provide wrk")
    return found


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(number) * _UNITS[unit]


def duration(seconds: float) -> int:
    """The whole seconds wrk runs for when asked for ``seconds`` (its -d takes whole seconds)."""
    return max(1, round(seconds))


def run(url: str, lua: str, connections: int, seconds: float, threads: int = 2) -> Result:
    """Drive ``url`` with a wrk Lua script for ``seconds``; keep-alive connections."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua)
    try:
        out = subprocess.run(
            [
                ensure_wrk(),
                f"-t{threads}",
                f"-c{connections}",
                f"-d{duration(seconds)}s",
                "--latency",
                "-s",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(script.name)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1))
    p99 = _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1))
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(match.group(1))
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(g) for g in match.groups())
    return Result(rate, p50, p99, errors)


def get_random_keys(prefix: str, count: int) -> str:
    """A Lua script: GET one of ``count`` keys ``prefix%06d`` at random."""
    return f"""
math.randomseed(os.time())
request = function()
  return wrk.format("GET", string.format("/v1/keys/{prefix}%06d", math.random(0, {count - 1})))
end
"""


def put_random_keys(prefix: str, count: int, size: int = 100) -> str:
    """A Lua script: PUT a ``size``-byte value to one of ``count`` keys at random."""
    return f"""
math.randomseed(os.time())
local body = string.rep("x", {size})
request = function()
  local path = string.format("/v1/keys/{prefix}%06d", math.random(0, {count - 1}))
  return wrk.format("PUT", path, nil, body)
end
"""
