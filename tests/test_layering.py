"""agent/ -> kms/ <- server/, nothing else (STYLE 1), checked by walking the imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("kms", "server", "agent")
ALLOWED = {"kms": {"kms"}, "server": {"kms", "server"}, "agent": {"kms", "agent"}}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", OURS)
def test_package_imports_only_what_it_may(package: str) -> None:
    offenders = []
    for path in _files(package):
        for module in _imports(path):
            top = module.split(".")[0]
            if top in OURS and top not in ALLOWED[package]:
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []


def test_generated_stubs_import_nothing_of_ours_but_themselves() -> None:
    for path in (ROOT / "kms" / "v1").glob("*.py"):
        for module in _imports(path):
            if module.split(".")[0] in OURS:
                assert module.startswith("kms.v1"), f"{path.name} imports {module}"


def test_protocol_modules_do_no_io() -> None:
    """kms/ is pure (STYLE 4); securefile, cli and grpc_quiet (the command-line tools' process set-up)
    are its declared exceptions."""
    io_modules = {"socket", "sqlite3", "subprocess", "ssl", "os", "tempfile"}
    for path in _files("kms"):
        if path.name in ("securefile.py", "cli.py", "grpc_quiet.py") or path.parent.name == "v1":
            continue
        used = {m.split(".")[0] for m in _imports(path)} & io_modules
        assert not used, f"{path.relative_to(ROOT)} imports {used}"


def _store_imports(path: Path) -> set[str]:
    """The imports in path that reach server.store: `import server.store...`, `from server.store...
    import`, and `from server import store`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {
                a.name for a in node.names if a.name == "server.store" or a.name.startswith("server.store.")
            }
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "server.store" or node.module.startswith("server.store."):
                found.add(node.module)
            elif node.module == "server":
                found |= {f"server.{a.name}" for a in node.names if a.name == "store"}
    return found


def test_api_goes_through_the_domain_services_not_the_store() -> None:
    """server/api/ turns domain answers into messages: records reach it through the domain modules."""
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in _files("server/api")
        for module in _store_imports(path)
    ]
    assert (ROOT / "server" / "api").is_dir() and offenders == []


def test_the_store_import_check_sees_every_spelling(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import server.store\nimport server.store.records as b\nfrom server.store import Store\n"
        "from server import store\nfrom server.store.rows import x\nfrom server import keys\n"
    )
    assert _store_imports(source) == {"server.store", "server.store.records", "server.store.rows"}
