"""The stubs in kms/v1/ are exactly what scripts/gen_protos.py makes from protos/."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_drift() -> None:
    assert _gen().drift() == [], "run: python scripts/gen_protos.py"


def test_drift_is_detected(tmp_path: Path) -> None:
    copy = tmp_path / "kms" / "v1"
    shutil.copytree(ROOT / "kms" / "v1", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "identity_pb2.py").write_text((copy / "identity_pb2.py").read_text() + "\n# edited by hand\n")
    (copy / "admin_pb2.pyi").unlink()
    assert _gen().drift(tmp_path) == ["kms/v1/admin_pb2.pyi", "kms/v1/identity_pb2.py"]


def test_type_stubs_exist_for_every_module() -> None:
    for py in (ROOT / "kms" / "v1").glob("*_pb2*.py"):
        assert py.with_suffix(".pyi").exists(), py.name
