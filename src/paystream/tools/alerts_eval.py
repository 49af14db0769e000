"""Which Prometheus alerts a gameday recording would have fired, and when.

`evaluate_alerts` replays the recorded series through ``promtool test rules``:

1. Every series becomes an ``input_series`` at ``interval: 1s``, one value per whole
   second: the sample of that second, ``stale`` where the target's own ``up`` sample
   says its scrape failed (as Prometheus marks a target's series when it goes down),
   ``_`` where nothing was recorded.
2. Every alert of the rules file gets an ``alert_rule_test`` every ``step`` seconds
   that expects nothing, so each alert that fires fails its test.
3. promtool's failure report, which lists what it *got*, is parsed strictly: a line
   the parser does not know makes the outcome "not evaluated", never a silent pass.

One promtool run evaluates the whole recording; the rules are evaluated every second.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROMTOOL_MISSING = "promtool not found (Debian: apt-get install prometheus); alert rules not evaluated"
PROMTOOL_TIMEOUT = 120.0  # seconds; a ten-minute recording takes about one


@dataclass(frozen=True)
class FiredAlert:
    """One alert (by its labels) firing at every evaluation from ``start`` to ``end``.

    Times are seconds since the run started; ``labels`` are the alert's labels
    without ``alertname`` (the rule's own labels such as ``severity`` included).
    """

    alert: str
    labels: dict[str, str]
    start: float
    end: float


@dataclass(frozen=True)
class AlertsOutcome:
    """What evaluating the alert rules over a recording found.

    ``evaluated`` is False when the rules could not be evaluated; ``note`` then says
    why in one line, and ``fired`` is empty.
    """

    evaluated: bool
    note: str
    fired: list[FiredAlert]


class PromtoolOutputError(ValueError):
    """promtool printed something the parser does not recognise."""


def evaluate_alerts(
    rules: Path,
    series: list[dict[str, Any]],
    *,
    duration: float,
    step: float = 5.0,
    promtool: str | None = None,
) -> AlertsOutcome:
    """Evaluate the alert rules in ``rules`` over recorded ``series`` from 0 to ``duration`` s.

    ``series`` are the recording's ``{"name", "labels", "samples": [[t, value], ...]}``.
    """
    executable = promtool if promtool is not None else shutil.which("promtool")
    if executable is None:
        return AlertsOutcome(evaluated=False, note=PROMTOOL_MISSING, fired=[])
    try:
        rules_text = rules.read_text()
    except OSError as exc:
        return AlertsOutcome(evaluated=False, note=f"cannot read the alert rules: {exc}", fired=[])
    alerts = alert_names(rules_text)
    if not alerts:
        return AlertsOutcome(evaluated=False, note=f"no alert rules found in {rules}", fired=[])
    times = eval_times(duration, step)
    with tempfile.TemporaryDirectory(prefix="paystream-alerts-") as tmp:
        folder = Path(tmp)
        # rule_files are relative to the test file: the copy sits next to it.
        (folder / "rules.yml").write_text(rules_text)
        test_file = folder / "replay_test.yml"
        test_file.write_text(json.dumps(promtool_test(series, alerts, times, duration), indent=1))
        try:
            result = subprocess.run(
                [executable, "test", "rules", test_file.name],
                capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT, check=False, cwd=folder,
            )
        except subprocess.TimeoutExpired:
            return AlertsOutcome(evaluated=False, note=f"promtool took over {PROMTOOL_TIMEOUT:g} s", fired=[])
        except OSError as exc:
            return AlertsOutcome(evaluated=False, note=f"promtool could not run: {exc}", fired=[])
    try:
        got = parse_promtool_output(result.returncode, result.stdout, result.stderr)
        fired = firing_spans(got, times)
    except PromtoolOutputError:
        return AlertsOutcome(evaluated=False, note=f"promtool: {first_error_line(result)}", fired=[])
    note = f"{len(alerts)} alert rules checked every {step:g} s from 0 to {times[-1]:g} s: {len(fired)} firing span(s)"
    return AlertsOutcome(evaluated=True, note=note, fired=fired)


# --- the test file --------------------------------------------------------------------

ALERT_LINE = re.compile(r"^\s*(?:-\s+)?alert:\s*['\"]?([A-Za-z_:][A-Za-z0-9_:]*)['\"]?\s*(?:#.*)?$")


def alert_names(rules_text: str) -> list[str]:
    """The ``alert:`` names of a Prometheus rules file, in file order."""
    names = []
    for line in rules_text.splitlines():
        match = ALERT_LINE.match(line)
        if match is not None and match.group(1) not in names:
            names.append(match.group(1))
    return names


def eval_times(duration: float, step: float) -> list[float]:
    """0, step, 2·step, … up to ``duration`` (both in seconds, whole milliseconds)."""
    if step <= 0:
        raise ValueError(f"step must be positive, not {step}")
    times = []
    count = math.floor(duration / step + 1e-9)
    for index in range(max(count, 0) + 1):
        times.append(round(index * step, 3))
    return times


def promtool_test(
    series: Sequence[dict[str, Any]], alerts: Sequence[str], times: Sequence[float], duration: float
) -> dict[str, Any]:
    """The promtool unit-test document (JSON is YAML) that expects no alert at any time."""
    seconds = max(math.ceil(duration), 0) + 1
    down = scrapes_failed(series)
    inputs = []
    for (name, label_pairs), samples in merged(series).items():
        labels = dict(label_pairs)
        target = (labels.get("job", ""), labels.get("instance", ""))
        failed = set() if name == "up" else down.get(target, set())
        inputs.append({
            "series": series_selector(name, labels),
            "values": series_values(samples, seconds, failed),
        })
    tests = []
    for t in times:
        for alert in alerts:
            tests.append({"eval_time": f"{round(t * 1000)}ms", "alertname": alert, "exp_alerts": []})
    return {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1s",
        "tests": [{"interval": "1s", "input_series": inputs, "alert_rule_test": tests}],
    }


SeriesKey = tuple[str, tuple[tuple[str, str], ...]]  # name, sorted labels


def merged(series: Iterable[dict[str, Any]]) -> dict[SeriesKey, list[Sequence[float]]]:
    """Series of the same name and labels as one: promtool would keep only the last."""
    samples: dict[SeriesKey, list[Sequence[float]]] = defaultdict(list)
    for one in series:
        key = (one["name"], tuple(sorted(one.get("labels", {}).items())))
        samples[key].extend(one.get("samples", []))
    return samples


def scrapes_failed(series: Iterable[dict[str, Any]]) -> dict[tuple[str, str], set[int]]:
    """(job, instance) → the whole seconds at which that target's ``up`` was 0."""
    down: dict[tuple[str, str], set[int]] = defaultdict(set)
    for one in series:
        if one["name"] != "up":
            continue
        labels = one.get("labels", {})
        for t, value in one.get("samples", []):
            if value == 0:
                down[(labels.get("job", ""), labels.get("instance", ""))].add(round(t))
    return down


def series_selector(name: str, labels: dict[str, str]) -> str:
    """``name{label="value", …}`` in PromQL notation, values escaped."""
    if not labels:
        return name
    pairs = ", ".join(f"{key}={quote(value)}" for key, value in sorted(labels.items()))
    return f"{name}{{{pairs}}}"


def quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def series_values(samples: Iterable[Sequence[float]], seconds: int, failed: set[int]) -> str:
    """One value per second 0 … seconds-1 in promtool's series notation.

    A sample belongs to the nearest whole second (the last one wins); a second without a
    sample is ``stale`` when the target's scrape failed then, else ``_``.
    """
    by_second: dict[int, float] = {}
    for t, value in samples:
        second = round(t)
        if value is not None and 0 <= second < seconds:
            by_second[second] = value
    values = []
    for second in range(seconds):
        if second in by_second:
            values.append(number(by_second[second]))
        elif second in failed:
            values.append("stale")
        else:
            values.append("_")
    return " ".join(values)


def number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    return repr(float(value))


# --- promtool's answer ----------------------------------------------------------------

HEADER = re.compile(r"alertname: ([A-Za-z_:][A-Za-z0-9_:]*), time: ([0-9a-z]+),")
LABELS = re.compile(r"Labels:\{(.*)\}")
ANNOTATIONS = re.compile(r"Annotations:\{.*\},?")  # a comma after all but the last alert
INDEX = re.compile(r"\d+:")
PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"(?:, |$)')
DURATION = re.compile(r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?")
DURATION_UNITS = (365 * 86400.0, 7 * 86400.0, 86400.0, 3600.0, 60.0, 1.0, 0.001)
ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


@dataclass(frozen=True)
class Got:
    """One alert promtool found firing at one evaluation time."""

    alert: str
    time: float
    labels: dict[str, str]


def parse_promtool_output(returncode: int, stdout: str, stderr: str) -> list[Got]:
    """Every firing alert of a ``promtool test rules`` run whose tests all expect none.

    Exit 0 with ``SUCCESS`` is no alert; exit 1 with only ``exp:[]``/``got:[…]`` blocks
    is the alerts in them. Anything else raises `PromtoolOutputError`.
    """
    out = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not out or not out[0].startswith("Unit Testing:"):
        raise PromtoolOutputError(f"unexpected promtool output: {stdout[:200]!r}")
    if returncode == 0:
        if out[1:] != ["SUCCESS"] or stderr.strip():
            raise PromtoolOutputError(f"unexpected promtool output: {(stdout + stderr)[:200]!r}")
        return []
    if returncode != 1 or out[1:]:
        raise PromtoolOutputError(f"promtool exited {returncode}")
    lines = iter([line.strip() for line in stderr.splitlines() if line.strip()])
    if next(lines, None) != "FAILED:":
        raise PromtoolOutputError("promtool failed without its FAILED: report")
    got = list(parse_failures(lines))
    if not got:
        raise PromtoolOutputError("promtool failed but reported no alert")
    return got


def parse_failures(lines: Iterator[str]) -> Iterator[Got]:
    """The alerts of the blocks after ``FAILED:`` (lines stripped, blank ones dropped)."""
    for line in lines:
        header = HEADER.fullmatch(line)
        if header is None:
            raise PromtoolOutputError(f"not an alert test failure: {line!r}")
        alert, at = header.group(1), parse_duration(header.group(2))
        expect(lines, "exp:[],")
        opening = next(lines, None)
        if opening == "got:[]":
            continue
        if opening != "got:[":
            raise PromtoolOutputError(f"expected got:[, found {opening!r}")
        for entry in lines:
            if entry == "]":
                break
            if INDEX.fullmatch(entry) is None:
                raise PromtoolOutputError(f"expected an alert index, found {entry!r}")
            labels = LABELS.fullmatch(next(lines, ""))
            if labels is None:
                raise PromtoolOutputError(f"alert {alert} at {at:g} s without its Labels line")
            if ANNOTATIONS.fullmatch(next(lines, "")) is None:
                raise PromtoolOutputError(f"alert {alert} at {at:g} s without its Annotations line")
            yield Got(alert=alert, time=at, labels=parse_labels(labels.group(1)))
        else:
            raise PromtoolOutputError(f"alert {alert} at {at:g} s: got:[ never closed")


def expect(lines: Iterator[str], wanted: str) -> None:
    found = next(lines, None)
    if found != wanted:
        raise PromtoolOutputError(f"expected {wanted!r}, found {found!r}")


def parse_labels(text: str) -> dict[str, str]:
    """``alertname="X", job="y"`` (Go-quoted values) → labels, without ``alertname``."""
    labels: dict[str, str] = {}
    position = 0
    while position < len(text):
        match = PAIR.match(text, position)
        if match is None:
            raise PromtoolOutputError(f"labels not understood: {text!r}")
        labels[match.group(1)] = unescape(match.group(2))
        position = match.end()
    labels.pop("alertname", None)
    return labels


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: ESCAPES.get(m.group(1), m.group(0)), value)


def parse_duration(text: str) -> float:
    """A Prometheus duration as promtool prints it (``1m10s``, ``2500ms``, ``0s``) in seconds."""
    match = DURATION.fullmatch(text)
    if match is None or not text:
        raise PromtoolOutputError(f"not a duration: {text!r}")
    seconds = 0.0
    for amount, unit in zip(match.groups(), DURATION_UNITS, strict=True):
        if amount is not None:
            seconds += int(amount) * unit
    return round(seconds, 3)


def first_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """promtool's first informative line: its error, not the ``FAILED:`` banner."""
    for line in (result.stderr + "\n" + result.stdout).splitlines():
        line = line.strip()
        if line and line != "FAILED:" and not line.startswith("Unit Testing:"):
            return line
    return f"exited {result.returncode} without saying why"


# --- spans ----------------------------------------------------------------------------


def firing_spans(got: Iterable[Got], times: Sequence[float]) -> list[FiredAlert]:
    """Runs of consecutive evaluation times at which the same alert (same labels) fired."""
    index = {t: i for i, t in enumerate(times)}
    seen: dict[tuple[str, tuple[tuple[str, str], ...]], set[int]] = defaultdict(set)
    for one in got:
        if one.time not in index:
            raise PromtoolOutputError(f"promtool reported time {one.time:g} s, never asked for")
        seen[(one.alert, tuple(sorted(one.labels.items())))].add(index[one.time])
    fired = []
    for (alert, labels), indices in seen.items():
        for first, last in runs(sorted(indices)):
            fired.append(FiredAlert(alert=alert, labels=dict(labels), start=times[first], end=times[last]))
    fired.sort(key=lambda f: (f.start, f.alert, sorted(f.labels.items())))
    return fired


def runs(indices: Sequence[int]) -> Iterator[tuple[int, int]]:
    """(first, last) of each run of consecutive integers in sorted ``indices``."""
    start = previous = indices[0]
    for i in indices[1:]:
        if i != previous + 1:
            yield start, previous
            start = i
        previous = i
    yield start, previous
