"""deploy/logging/vector.yaml parses, its components are wired to each other, and the fields it
reads are the ones a paystream log line really has (a line made by `configure_logging`).

No Vector binary is installable from the registries reachable here (it is on neither PyPI nor
Debian), so `vector validate` is not run; this checks the config's shape and its fields."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import structlog
import yaml

from paystream.platform.observability import bound, configure_logging, get_logger
from tests.deploy.manifests import ROOT

CONFIG = ROOT / "deploy" / "logging" / "vector.yaml"


def config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG.read_text())


def a_log_line() -> dict[str, Any]:
    stream = io.StringIO()
    configure_logging("ledger", "info", stream=stream)
    try:
        with bound(payment_id="pay_1", correlation_id="cor_1"):
            get_logger("test").info("ledger_posted", event_id="evt_1")
    finally:
        structlog.reset_defaults()
    return json.loads(stream.getvalue().splitlines()[-1])


def test_every_input_names_a_component_that_exists() -> None:
    data = config()
    components = set(data["sources"]) | set(data["transforms"])
    for section in ("transforms", "sinks"):
        for name, component in data[section].items():
            assert component["inputs"], name
            assert set(component["inputs"]) <= components, f"{name}: {component['inputs']}"


def test_logs_go_to_loki_labelled_by_service_and_level() -> None:
    (sink,) = config()["sinks"].values()
    assert sink["type"] == "loki"
    assert sink["encoding"]["codec"] == "json"
    labelled = {re.fullmatch(r"\{\{ (\w+) \}\}", v).group(1) for v in sink["labels"].values()  # type: ignore[union-attr]
                if v.startswith("{{")}
    assert labelled == {"service", "level"}


def test_the_remap_reads_the_fields_a_paystream_line_has() -> None:
    line = a_log_line()
    assert {"service", "level", "ts", "msg", "payment_id", "correlation_id", "event_id"} <= set(line)
    source = config()["transforms"]["paystream_json"]["source"]
    read = set(re.findall(r"(?<![\w.])\.(\w+)", source)) - {"message", "timestamp", "kubernetes"}
    assert read <= set(line), f"the remap reads fields paystream never writes: {read - set(line)}"
    assert {"ts", "msg", "service"} <= read


def test_the_sources_read_what_paystream_writes() -> None:
    sources = config()["sources"]
    assert sources["kubernetes"]["type"] == "kubernetes_logs"
    assert "app.kubernetes.io/name=paystream" in sources["kubernetes"]["extra_label_selector"]
    assert any(path.endswith("/logs/*.log") for path in sources["local_files"]["include"])
