"""A plain (non-editable) install of a built wheel gives working commands."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.harness import short_tmpdir

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{cmd}: {result.stdout}\n{result.stderr}"
    return result


def test_wheel_installs_into_a_fresh_virtualenv() -> None:
    work = short_tmpdir("kmspk")
    try:
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "-w",
                str(work / "dist"),
                str(ROOT),
            ],
            work,
        )
        wheel = next((work / "dist").glob("seed_kms-*.whl"))
        venv = work / "venv"
        _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], work)
        # Dependencies come from this environment (no network in tests); our
        # own code must come from the wheel only: the .pth adds site-packages
        # as a plain path, so the editable-install hook there is not run.
        site = Path(sysconfig.get_paths()["purelib"])
        venv_site = next((venv / "lib").glob("python3*/site-packages"))
        (venv_site / "deps.pth").write_text(f"{site}\n")
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                str(venv / "bin" / "python"),
                "install",
                "--no-deps",
                str(wheel),
            ],
            work,
        )

        where = _run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import server, kms.v1.enrollment_pb2 as p; print(server.__file__); print(p.__file__)",
            ],
            work,
        )
        assert all(line.startswith(str(venv_site)) for line in where.stdout.split()), where.stdout
        assert (venv_site / "kms" / "v1" / "enrollment_pb2_grpc.pyi").exists()
        for command in ("kms-server", "kms-agent"):
            assert "usage" in _run([str(venv / "bin" / command), "--help"], work).stdout

        # The installed server really starts and answers its admin socket.
        from tests.harness import ServerProcess, exe  # noqa: F401

        proc = subprocess.Popen(
            [
                str(venv / "bin" / "kms-server"),
                "run",
                "--data-dir",
                str(work / "d"),
                "--listen",
                "127.0.0.1:0",
                "--enroll-listen",
                "127.0.0.1:0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=work,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("kms-server ready address=127.0.0.1:"), line + (
                proc.stderr.read() if proc.stderr else ""
            )
            fp = _run(
                [str(venv / "bin" / "kms-server"), "ca", "fingerprint", "--data-dir", str(work / "d")], work
            ).stdout.strip()
            assert f"ca-fingerprint={fp}" in line
        finally:
            proc.terminate()
            assert proc.wait(20) == 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' in-tree leftovers
