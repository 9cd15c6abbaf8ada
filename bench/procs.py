"""Server processes: start, wait for the readiness line, read memory, always stop.

Both kms-server and the baseline server print one ``... ready key=value ...``
line on stdout once they listen; that line gives the bound addresses (ports
are 0, picked by the OS). Output is collected so a failure can show it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "BenchError",
    "BenchSkip",
    "ServerProcess",
    "cpu_seconds",
    "exe",
    "rss_bytes",
    "tree",
    "tree_cpu_seconds",
    "tree_rss_bytes",
]

READY_TIMEOUT = 60.0


class BenchError(Exception):
    """A benchmark could not run (a server did not start, a client failed): one line for the user."""


class BenchSkip(BenchError):
    """A scenario cannot run on this machine (a tool is missing): said in one line, not an error."""


def exe(name: str) -> str:
    """A console script of this virtualenv (the one running the bench), else from PATH."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/status (VmRSS, in kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, from /proc/PID/stat."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    # The command name (field 2) may hold spaces: fields after its closing parenthesis, from field 3.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree(root: int) -> list[int]:
    """A process and all its descendants alive now (a supervisor and its workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue  # exited meanwhile
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def tree_cpu_seconds(root: int) -> float:
    """CPU time of a process and all its descendants: a supervisor and its workers.

    Each member counts its own user + system time and that of its children it
    has already reaped (cutime + cstime), so a worker that exits between two
    readings moves its time to its parent's count instead of losing it.
    """
    total = 0
    for pid in tree(root):
        try:
            total += sum(int(f) for f in _stat_fields(pid)[11:15])
        except OSError:
            continue
    return total / os.sysconf("SC_CLK_TCK")


def tree_rss_bytes(root: int) -> int:
    """Resident set size of a process and its descendants (pages they share count in each)."""
    total = 0
    for pid in tree(root):
        try:
            total += rss_bytes(pid)
        except (OSError, BenchError):
            continue
    return total


def _clean_env() -> dict[str, str]:
    # KMS_* variables of the caller's shell would change the server under test.
    return {k: v for k, v in os.environ.items() if not k.startswith("KMS_")}


class ServerProcess:
    """One server child; ``fields`` holds its readiness line as key=value pairs."""

    def __init__(
        self,
        cmd: Sequence[str],
        ready_prefix: str,
        label: str,
        log: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._cmd = list(cmd)
        self._env = {**_clean_env(), **(env or {})}
        self._prefix = ready_prefix
        self.label = label
        self.proc: subprocess.Popen[str] | None = None
        self.fields: dict[str, str] = {}
        self._out: list[str] = []
        # stderr goes to a file, not a pipe: a server logging a line per request
        # must not make the bench process spend CPU reading it.
        self._log = log

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def output(self, last: int = 30) -> str:
        try:
            tail = self._log.read_text(errors="replace").splitlines()[-last:]
        except OSError:
            tail = []
        return "".join(self._out[-last:]) + "\n".join(tail)

    def start(self) -> ServerProcess:
        with self._log.open("w") as log:
            self.proc = subprocess.Popen(
                self._cmd,
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
                env=self._env,
            )
        ready = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self._out.append(line)
                del self._out[:-50]
                if line.startswith(self._prefix):
                    self.fields = dict(part.split("=", 1) for part in line.split()[2:] if "=" in part)
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(READY_TIMEOUT) or not self.fields:
            self.stop()
            raise BenchError(f"{self.label} did not become ready:\n{self.output()}")
        return self

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"{self.label} exited during the run:\n{self.output()}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
