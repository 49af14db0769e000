"""The fraud model in the service: load an artefact, score in-process, reload a new version.

An artefact is one JSON file written by ``paystream fraud train``: ``format``,
``format_version``, ``version``, ``features`` (must equal `features.FEATURES`, in order),
``thresholds``, ``metrics``, ``training`` and ``model`` (LightGBM's own text format, which
loads without unpickling anything). `load` refuses anything else with a `ModelError`
naming what is wrong; the service then stays on the rules (`ModelSource`).

Scoring is one LightGBM call per batch with ``pred_contrib``: per feature, its SHAP
contribution to the log-odds; their sum is the score's log-odds, and the largest positive
ones are the reason codes.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from paystream.fraud.domain import ModelScore, Thresholds
from paystream.fraud.features import FEATURES
from paystream.platform.observability import get_logger

log = get_logger(__name__)

ARTEFACT_FORMAT = "paystream-fraud-model"
ARTEFACT_VERSION = 1
TOP_FEATURES = 3

SCORE_DIGITS = 6  # a score is kept and served rounded to this many decimals


def default_model_path() -> Path:
    """The model shipped in the package (trained by `paystream fraud train` with a fixed seed)."""
    return Path(__file__).with_name("models") / "default.json"


class ModelError(Exception):
    """An artefact that cannot be used: missing, corrupt, another format or another feature list."""


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A loaded artefact, ready to score."""

    version: str
    thresholds: Thresholds
    booster: Any  # lightgbm.Booster (untyped)
    metrics: dict[str, Any]

    def score(self, rows: Sequence[Sequence[float]]) -> list[ModelScore]:
        """Scores and reason codes of feature rows (in `FEATURES` order)."""
        x = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(FEATURES))
        contributions = np.asarray(self.booster.predict(x, pred_contrib=True, num_threads=1), dtype=np.float64)
        scores: list[ModelScore] = []
        for row in contributions:
            log_odds = float(row.sum())
            per_feature = row[:-1]  # the last column is the bias
            top = np.argsort(-per_feature, kind="stable")[:TOP_FEATURES]
            names = tuple(FEATURES[i] for i in top if per_feature[i] > 0)
            # Six decimals are all a probability needs here; the full float's 16-digit run can
            # pass for a card number in stored answers (tests/e2e/test_zz_card_data.py).
            probability = round(1.0 / (1.0 + math.exp(-log_odds)), SCORE_DIGITS)
            scores.append(ModelScore(score=probability, version=self.version,
                                     thresholds=self.thresholds, top_features=names))
        return scores


def parse(text: str) -> LoadedModel:
    """A model from an artefact's text; `ModelError` says what is wrong with it."""
    try:
        artefact = json.loads(text)
    except ValueError as exc:
        raise ModelError(f"not JSON: {exc}") from exc
    if not isinstance(artefact, dict) or artefact.get("format") != ARTEFACT_FORMAT:
        raise ModelError(f"not a {ARTEFACT_FORMAT} artefact")
    if artefact.get("format_version") != ARTEFACT_VERSION:
        raise ModelError(f"format_version {artefact.get('format_version')!r}, this code reads {ARTEFACT_VERSION}")
    features = artefact.get("features")
    if features != list(FEATURES):
        raise ModelError(f"feature list {features!r} does not match this code's {list(FEATURES)!r}")
    try:
        thresholds = Thresholds(review=float(artefact["thresholds"]["review"]),
                                decline=float(artefact["thresholds"]["decline"]))
        version = str(artefact["version"])
        model_text = artefact["model"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"incomplete artefact: {exc!r}") from exc
    if not 0.0 < thresholds.review <= thresholds.decline <= 1.0:
        raise ModelError(f"thresholds {thresholds} are not 0 < review <= decline <= 1")
    try:
        import lightgbm as lgb
    except (ImportError, OSError) as exc:  # e.g. the OpenMP runtime it links is missing
        raise ModelError(f"lightgbm cannot be imported: {exc}") from exc
    try:
        booster = lgb.Booster(model_str=model_text)
    except (lgb.basic.LightGBMError, TypeError, ValueError) as exc:
        raise ModelError(f"the model does not load: {exc}") from exc
    if booster.num_feature() != len(FEATURES) or booster.feature_name() != list(FEATURES):
        raise ModelError(f"the model's features {booster.feature_name()!r} are not this code's")
    return LoadedModel(version=version, thresholds=thresholds, booster=booster,
                       metrics=dict(artefact.get("metrics") or {}))


def load(path: Path) -> LoadedModel:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return parse(text)


_NEVER = object()


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class ModelSource:
    """The model the service scores with, picked up again whenever its file changes.

    `model` is None while no usable model has loaded (the service runs on the rules). A
    new file that does not load is refused with one log line and ``on_refused``; the model
    already loaded, if any, stays (a bad deployment does not take a good model away).
    `refresh` is cheap when nothing changed (one ``stat``); `run` calls it every
    ``interval`` seconds, loading in a thread so the event loop never waits for a parse.
    """

    def __init__(self, path: Path, *, interval: float = 2.0,
                 on_refused: Callable[[str], None] | None = None,
                 on_loaded: Callable[[LoadedModel], None] | None = None) -> None:
        self.path = path
        self.model: LoadedModel | None = None
        self._interval = interval
        self._seen: object = _NEVER
        self._on_refused = on_refused
        self._on_loaded = on_loaded

    def refresh(self) -> bool:
        """Load the file if it changed since the last look; True when a new model took over."""
        signature = _signature(self.path)
        if signature == self._seen:
            return False
        self._seen = signature
        try:
            model = load(self.path)
        except ModelError as exc:
            log.error("fraud_model_refused", path=str(self.path), error=str(exc),
                      serving=self.model.version if self.model else "rules_only")
            if self._on_refused is not None:
                self._on_refused(str(exc))
            return False
        previous = self.model.version if self.model else None
        self.model = model
        log.info("fraud_model_loaded", path=str(self.path), version=model.version, previous=previous)
        if self._on_loaded is not None:
            self._on_loaded(model)
        return True

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await asyncio.to_thread(self.refresh)
            try:
                await asyncio.wait_for(stopping.wait(), self._interval)
            except TimeoutError:
                continue
