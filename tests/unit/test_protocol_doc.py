"""docs/protocol.md keeps up with the code: every RPC of every kms.v1 service, every vector file."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import kms.v1

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "protocol.md").read_text()


def _kms_v1_methods() -> list[str]:
    methods = []
    for module in pkgutil.iter_modules(kms.v1.__path__):
        if module.name.endswith("_pb2"):
            descriptor = importlib.import_module(f"kms.v1.{module.name}").DESCRIPTOR
            for service in descriptor.services_by_name.values():
                methods += [f"/{service.full_name}/{m.name}" for m in service.methods]
    return sorted(methods)


def test_every_rpc_of_every_kms_v1_service_has_its_status_codes() -> None:
    methods = _kms_v1_methods()
    assert len(methods) > 30  # the walk found the services
    missing = [m for m in methods if f"| `{m}` |" not in DOC]
    assert not missing, f"docs/protocol.md §9 lists no status codes for {missing}"


def test_every_vector_file_is_referenced() -> None:
    vectors = sorted(p.name for p in (ROOT / "tests" / "vectors").glob("*.json"))
    assert vectors
    missing = [name for name in vectors if f"`{name}`" not in DOC]
    assert not missing, f"docs/protocol.md does not reference {missing}"
