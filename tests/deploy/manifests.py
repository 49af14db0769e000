"""Render deploy/helm/paystream and check every object it makes.

Rendering is Helm's own engine: `helm-python-sdk` binds Helm v4's Go SDK (``libhelm_c``,
shipped in its wheel), since no registry reachable here serves the ``helm`` binary. Each
object of a built-in kind is checked by `kubernetes_validate.validate(..., strict=True)`
(what ``kubernetes-validate --strict`` runs); each object of a custom kind against its schema
vendored in deploy/helm/crd-schemas/. A kind with neither is a problem, never a pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "paystream"
CRD_SCHEMAS = ROOT / "deploy" / "helm" / "crd-schemas"
KUBERNETES_VERSION = "1.33.0"
RELEASE, NAMESPACE = "ps", "payments"

# Values a real install must give (secrets.values: the chart makes the Secret from them);
# the CI workflow's `helm template` uses the same file.
TEST_VALUES: dict[str, Any] = yaml.safe_load((Path(__file__).with_name("ci-values.yaml")).read_text())


@dataclass(frozen=True)
class Rendered:
    template: str
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind"))

    @property
    def name(self) -> str:
        return str(self.obj.get("metadata", {}).get("name"))


def render(values: dict[str, Any] | None = None, chart: Path = CHART) -> list[Rendered]:
    """Every object the chart makes with ``values`` (TEST_VALUES by default)."""
    import helm_python as helm

    with helm.Chart.load(str(chart)) as loaded:
        files = loaded.render(TEST_VALUES if values is None else values, name=RELEASE, namespace=NAMESPACE)
    out = []
    for template, text in sorted(files.items()):
        for obj in yaml.safe_load_all(text):
            if obj:
                out.append(Rendered(template, obj))
    return out


def crd_schema_path(obj: dict[str, Any]) -> Path:
    group_version = str(obj.get("apiVersion", "")).replace("/", "_")
    return CRD_SCHEMAS / f"{group_version}_{obj.get('kind')}.yaml"


@cache
def _crd_validator(path: Path) -> jsonschema.protocols.Validator:
    schema = yaml.safe_load(path.read_text())
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


def problems(obj: dict[str, Any]) -> list[str]:
    """What is wrong with one object; empty when it passed a schema of its kind."""
    what = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        return []
    except kubernetes_validate.ValidationError as exc:
        return [f"{what}: {'.'.join(str(p) for p in exc.path)}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        pass
    path = crd_schema_path(obj)
    if not path.exists():
        return [f"{what}: kind {obj.get('apiVersion')}/{obj.get('kind')} was checked by no schema "
                f"(not a Kubernetes kind, and no {path.relative_to(ROOT)})"]
    found = sorted(_crd_validator(path).iter_errors(obj), key=lambda e: list(e.path))
    return [f"{what}: {'.'.join(str(p) for p in e.path)}: {e.message}" for e in found]
