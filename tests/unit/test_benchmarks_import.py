"""The benchmarks are not run by `make test`, so a rename elsewhere could leave one that no longer
starts (bench_tracing_off still imported `paystream.platform.ids` after `ids` moved to contracts).
Importing each module catches that without running it."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import tests.benchmarks

MODULES = sorted(info.name for info in pkgutil.iter_modules(tests.benchmarks.__path__))


def test_the_benchmarks_are_found() -> None:
    assert {"bench_floor", "bench_ledger", "bench_fraud_model", "bench_tracing_off"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_module_imports(name: str) -> None:
    module = importlib.import_module(f"tests.benchmarks.{name}")
    if name.startswith("bench_"):
        assert callable(getattr(module, "main", None)), f"{name} has no main()"
