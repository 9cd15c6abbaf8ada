"""Closed-loop HTTP load from ``wrk`` (or ``ab``): a fixed number of requests in flight on kept-alive
connections, for a peer product that speaks HTTPS/JSON. Neither tool is required by the bench: the
scenario that drives them is skipped, and says so, where neither is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import BenchError

__all__ = ["HttpOutcome", "HttpRequest", "drive", "load_tool", "parse_ab", "parse_wrk"]


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str  # from the server's root, e.g. /v1/transit/datakey/wrapped/bench
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpOutcome:
    tool: str
    seconds: float
    ok: int  # 2xx answers completed in the time
    failed: int  # other statuses, socket errors and timeouts

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def load_tool() -> str | None:
    """wrk if installed (multi-threaded), else ab; None for neither."""
    return shutil.which("wrk") or shutil.which("ab")


def _lua_string(value: str | bytes) -> str:
    text = value.decode() if isinstance(value, bytes) else value
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _wrk(tool: str, base: str, request: HttpRequest, in_flight: int, seconds: int, work: Path) -> HttpOutcome:
    script = work / "wrk.lua"
    lines = [f"wrk.method = {_lua_string(request.method)}", f"wrk.body = {_lua_string(request.body)}"]
    lines += [f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in request.headers.items()]
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o600)  # it may hold the peer's token
    cmd = [tool, "-t", "2", "-c", str(in_flight), "-d", f"{seconds}s", "--timeout", "10s", "-s", str(script)]
    return parse_wrk(_run([*cmd, base + request.path], seconds))


def parse_wrk(out: str) -> HttpOutcome:
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", out)
    if done is None:
        raise BenchError(f"wrk printed no request count:\n{out[-2000:]}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[done.group(3)]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(non_2xx.group(1)) if non_2xx else 0) + (
        sum(int(n) for n in sockets.groups()) if sockets else 0
    )
    total = int(done.group(1))
    return HttpOutcome("wrk", float(done.group(2)) * scale, max(0, total - failed), failed)


def _ab(tool: str, base: str, request: HttpRequest, in_flight: int, seconds: int, work: Path) -> HttpOutcome:
    cmd = [tool, "-q", "-k", "-c", str(in_flight), "-t", str(seconds), "-n", "100000000", "-s", "10"]
    for name, value in request.headers.items():
        if name.lower() == "content-type":
            cmd += ["-T", value]
        else:
            cmd += ["-H", f"{name}: {value}"]
    if request.method in ("POST", "PUT"):
        body = work / "ab.body"
        body.write_bytes(request.body)
        cmd += ["-p" if request.method == "POST" else "-u", str(body)]
    elif request.method != "GET":
        cmd += ["-m", request.method]
    return parse_ab(_run([*cmd, base + request.path], seconds))


def parse_ab(out: str) -> HttpOutcome:
    complete = re.search(r"Complete requests:\s+(\d+)", out)
    taken = re.search(r"Time taken for tests:\s+([\d.]+) seconds", out)
    if complete is None or taken is None:
        raise BenchError(f"ab printed no request count:\n{out[-2000:]}")
    # ab counts an answer whose length differs from the first as failed ("Length"): not an error here.
    broken = re.search(r"\(Connect: (\d+), Receive: (\d+), Length: \d+, Exceptions: (\d+)\)", out)
    non_2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    failed = (sum(int(n) for n in broken.groups()) if broken else 0) + (
        int(non_2xx.group(1)) if non_2xx else 0
    )
    return HttpOutcome("ab", float(taken.group(1)), max(0, int(complete.group(1)) - failed), failed)


def _run(cmd: list[str], seconds: int) -> str:
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=seconds + 60, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{Path(cmd[0]).name} did not finish in {seconds + 60}s") from exc
    if proc.returncode != 0:
        raise BenchError(f"{Path(cmd[0]).name} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def drive(base: str, request: HttpRequest, in_flight: int, seconds: int, work: Path) -> HttpOutcome:
    """``in_flight`` requests at all times for ``seconds`` (whole seconds: wrk's unit) against base."""
    tool = load_tool()
    if tool is None:
        raise BenchError("neither wrk nor ab is installed")
    work.mkdir(parents=True, exist_ok=True)
    run = _wrk if Path(tool).name == "wrk" else _ab
    return run(tool, base, request, in_flight, max(1, seconds), work)
