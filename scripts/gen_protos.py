"""Regenerate the gRPC stubs in kms/v1/ from protos/kms/v1/*.proto.

The one script that writes kms/v1/: messages (``_pb2.py`` + ``.pyi``) come from
grpcio-tools' bundled protoc, service stubs (``_pb2_grpc.py``) from its gRPC
plugin and their type stubs (``_pb2_grpc.pyi``) from mypy-protobuf. The
versions of both are pinned in pyproject's ``dev`` extra, because the output
(and the runtime version check it embeds) depends on them.

Usage:
    python scripts/gen_protos.py            # rewrite kms/v1/
    python scripts/gen_protos.py --check    # exit 1 if kms/v1/ has drifted
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_PACKAGE = Path("kms") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
INIT_TEXT = '"""Generated gRPC stubs for kms.v1. Do not edit: run scripts/gen_protos.py."""\n'


def _mypy_grpc_plugin() -> str:
    exe_dir = Path(sys.executable).parent
    candidate = exe_dir / "protoc-gen-mypy_grpc"
    found = str(candidate) if candidate.exists() else shutil.which("protoc-gen-mypy_grpc")
    if not found:
        raise SystemExit("protoc-gen-mypy_grpc not found: pip install -e '.[dev]'")
    return found


def generate(out_root: Path) -> None:
    """Writes the generated package kms/v1/ under out_root."""
    from grpc_tools import protoc  # dev dependency, imported only here

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / OUT_PACKAGE).glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_ROOT / OUT_PACKAGE}")
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--plugin=protoc-gen-mypy_grpc={_mypy_grpc_plugin()}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out_root / OUT_PACKAGE / "__init__.py").write_text(INIT_TEXT)


def _generated_files(root: Path) -> set[str]:
    pkg = root / OUT_PACKAGE
    names = {p.name for p in pkg.iterdir() if p.name.endswith(GENERATED_SUFFIXES)} if pkg.exists() else set()
    return names | {"__init__.py"}


def drift(repo_root: Path = ROOT) -> list[str]:
    """Returns the files of kms/v1/ that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        (fresh / OUT_PACKAGE).mkdir(parents=True)
        generate(fresh)
        problems = []
        for name in sorted(_generated_files(fresh) | _generated_files(repo_root)):
            a, b = fresh / OUT_PACKAGE / name, repo_root / OUT_PACKAGE / name
            if not (a.exists() and b.exists() and filecmp.cmp(a, b, shallow=False)):
                problems.append(str(OUT_PACKAGE / name))
        return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report drift instead of writing")
    args = parser.parse_args()
    if args.check:
        problems = drift()
        for p in problems:
            print(f"drift: {p}", file=sys.stderr)
        if problems:
            print("run: python scripts/gen_protos.py", file=sys.stderr)
        return 1 if problems else 0
    pkg = ROOT / OUT_PACKAGE
    for old in pkg.glob("*_pb2*.py*"):
        old.unlink()
    generate(ROOT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
