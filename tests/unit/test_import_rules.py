"""The layering of ARCHITECTURE.md §4, checked on the source: services never import each
other; platform and contracts import no service; domain modules do no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from paystream.contracts.topology import SERVICES

SRC = Path(__file__).resolve().parents[2] / "src" / "paystream"
IO_LIBRARIES = ("asyncpg", "nats", "redis", "httpx", "aiohttp", "fastapi", "starlette", "uvicorn",
                "asyncio", "socket", "subprocess", "requests", "psycopg")


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _modules(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service(service: str) -> None:
    others = [s for s in SERVICES if s != service]
    offending = [
        f"{path.relative_to(SRC)}: {name}"
        for path in _modules(service) for name in _imports(path)
        if any(name == f"paystream.{o}" or name.startswith(f"paystream.{o}.") for o in others)
    ]
    assert offending == []


@pytest.mark.parametrize("package", ["platform", "contracts"])
def test_shared_packages_import_no_service(package: str) -> None:
    offending = [
        f"{path.relative_to(SRC)}: {name}"
        for path in _modules(package) for name in _imports(path)
        if any(name == f"paystream.{s}" or name.startswith(f"paystream.{s}.") for s in SERVICES)
    ]
    assert offending == []


# Every service's domain.py, and the pure modules a domain was split into by topic.
PURE_MODULES = [f"{service}/domain.py" for service in SERVICES] + ["ledger/orders.py"]


@pytest.mark.parametrize("module", PURE_MODULES)
def test_domain_modules_do_no_io(module: str) -> None:
    offending = [name for name in _imports(SRC / module) if name.split(".")[0] in IO_LIBRARIES]
    assert offending == []


def test_contracts_import_nothing_from_platform() -> None:
    """The layers form a line: contracts ← platform ← services; contracts stand alone."""
    offending = [
        f"{path.relative_to(SRC)}: {name}"
        for path in _modules("contracts") for name in _imports(path)
        if name == "paystream.platform" or name.startswith("paystream.platform.")
    ]
    assert offending == []
