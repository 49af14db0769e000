"""Training the fraud model on simulator output, and measuring it against the rules alone.

`train` replays the simulated history through the one feature module (`features.replay`),
splits it by time (the model never sees the future it is judged on):

    | fit: first 60 % of the days | thresholds: next 15 % | evaluation: last 25 % |

fits a LightGBM gradient-boosted model (docs/fraud-model.md says why LightGBM, with the
measurement), picks the review and decline thresholds on the middle slice as the lowest
scores whose precision there is at least the rules' (and at least the floors below), and
reports precision, recall and PR-AUC of the rules alone, the model alone and the two
combined as the service combines them, on the last slice. The artefact is one JSON file
(`model.ARTEFACT_FORMAT`): the model's text, the feature list, the thresholds, the metrics
and the training seed.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from paystream.fraud.domain import Decision, Facts, ModelScore, Rule, Thresholds, combine, decide, default_rules
from paystream.fraud.features import FEATURES, PaymentFacts, replay
from paystream.fraud.model import ARTEFACT_FORMAT, ARTEFACT_VERSION, SCORE_DIGITS
from paystream.fraud.simulate import SimPayment

FloatArray = npt.NDArray[np.float64]

REVIEW_PRECISION_FLOOR = 0.6
DECLINE_PRECISION_FLOOR = 0.95
PARAMS: dict[str, Any] = {
    "objective": "binary", "learning_rate": 0.05, "num_leaves": 15, "min_child_samples": 20,
    "feature_fraction": 0.9, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
    "num_threads": 1, "deterministic": True, "force_row_wise": True, "verbosity": -1,
}
ROUNDS = 150


def facts_of_sim(p: SimPayment) -> PaymentFacts:
    """A simulated payment as the service would see it."""
    deposit = p.kind == "deposit"
    subject = p.destination if p.source is None else p.source
    return PaymentFacts(payment_id=p.payment_id, at_ms=p.at_ms, subject=subject,
                        counterparty=None if deposit else p.destination, amount=p.amount, is_deposit=deposit)


@dataclass(frozen=True, slots=True)
class Dataset:
    """Feature rows, labels, times and the rules' decision of each simulated payment."""

    x: FloatArray
    y: npt.NDArray[np.int8]
    at_ms: npt.NDArray[np.int64]
    rules: list[Decision]
    patterns: list[str]

    def take(self, mask: npt.NDArray[np.bool_]) -> Dataset:
        index = np.flatnonzero(mask)
        return Dataset(self.x[index], self.y[index], self.at_ms[index], [self.rules[i] for i in index],
                       [self.patterns[i] for i in index])


def service_rules() -> tuple[Rule, ...]:
    """The rules with the service's default settings."""
    from paystream.platform.config import Settings

    settings = Settings()
    return default_rules(amount_limit=settings.fraud_amount_limit,
                         review_threshold=settings.fraud_review_threshold,
                         velocity_limit=settings.fraud_velocity_limit)


def dataset(payments: Sequence[SimPayment], rules: Sequence[Rule]) -> Dataset:
    facts = [facts_of_sim(p) for p in payments]
    rows = replay(facts)
    velocity = FEATURES.index("velocity_1m")
    decisions = [
        decide(rules, Facts(amount=p.amount, currency=p.currency, kind=p.kind, recent_payments=int(row[velocity])))
        for p, row in zip(payments, rows, strict=True)
    ]
    return Dataset(
        x=np.asarray(rows, dtype=np.float64), y=np.asarray([p.label for p in payments], dtype=np.int8),
        at_ms=np.asarray([p.at_ms for p in payments], dtype=np.int64), rules=decisions,
        patterns=[p.pattern for p in payments],
    )


# -- metrics ---------------------------------------------------------------------------------


def average_precision(y: npt.NDArray[np.int8], score: FloatArray) -> float:
    """PR-AUC as average precision (a step function over distinct thresholds; ties stay together)."""
    positives = int(y.sum())
    if positives == 0:
        return 0.0
    order = np.argsort(-score, kind="stable")
    s, t = score[order], y[order]
    tp = np.cumsum(t)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # last index of each distinct score
    precision = tp[last] / (last + 1)
    recall = tp[last] / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def precision_recall(y: npt.NDArray[np.int8], flagged: npt.NDArray[np.bool_]) -> tuple[float | None, float]:
    """Precision (None when nothing is flagged) and recall."""
    tp = int((flagged & (y == 1)).sum())
    n = int(flagged.sum())
    return (tp / n if n else None), (tp / int(y.sum()) if y.sum() else 0.0)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _level(outcomes: Sequence[str]) -> FloatArray:
    return np.asarray([{"approve": 0.0, "review": 1.0, "decline": 2.0}[o] for o in outcomes])


def report(y: npt.NDArray[np.int8], outcomes: Sequence[str], score: FloatArray) -> dict[str, float | None]:
    """Precision and recall at review (review or decline) and at decline, and PR-AUC of ``score``."""
    level = _level(outcomes)
    review_p, review_r = precision_recall(y, level >= 1)
    decline_p, decline_r = precision_recall(y, level >= 2)
    return {
        "review_precision": _round(review_p), "review_recall": _round(review_r),
        "decline_precision": _round(decline_p), "decline_recall": _round(decline_r),
        "pr_auc": _round(average_precision(y, score)), "flagged": int((level >= 1).sum()),
    }


def recall_by_pattern(patterns: Sequence[str], outcomes: Sequence[str]) -> dict[str, float]:
    """Per fraud pattern, the share of its payments reviewed or declined (for honest: the false-positive rate)."""
    counts: dict[str, list[int]] = {}
    for pattern, outcome in zip(patterns, outcomes, strict=True):
        seen = counts.setdefault(pattern, [0, 0])
        seen[0] += 1
        seen[1] += outcome != "approve"
    return {pattern: round(flagged / total, 4) for pattern, (total, flagged) in sorted(counts.items())}


def threshold_for(y: npt.NDArray[np.int8], score: FloatArray, precision: float) -> float:
    """The lowest score threshold whose precision on (y, score) is at least ``precision``."""
    order = np.argsort(-score, kind="stable")
    s, t = score[order], y[order]
    tp = np.cumsum(t)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    ok = np.flatnonzero(tp[last] / (last + 1) >= precision)
    if len(ok) == 0:
        return 1.0
    return float(s[last[ok[-1]]])


# -- training --------------------------------------------------------------------------------


def fit(x: FloatArray, y: npt.NDArray[np.int8], seed: int) -> Any:
    import lightgbm as lgb

    params = {**PARAMS, "seed": seed}
    return lgb.train(params, lgb.Dataset(x, label=y, feature_name=list(FEATURES), free_raw_data=True),
                     num_boost_round=ROUNDS)


def train(payments: Sequence[SimPayment], *, seed: int, data_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit, pick thresholds, evaluate; returns the artefact (a JSON-ready dict)."""
    import lightgbm as lgb

    data = dataset(payments, service_rules())
    start, end = int(data.at_ms.min()), int(data.at_ms.max()) + 1
    fit_end, tune_end = start + (end - start) * 60 // 100, start + (end - start) * 75 // 100
    fit_part = data.take(data.at_ms < fit_end)
    tune = data.take((data.at_ms >= fit_end) & (data.at_ms < tune_end))
    test = data.take(data.at_ms >= tune_end)
    began = time.perf_counter()
    booster = fit(fit_part.x, fit_part.y, seed)
    fit_seconds = time.perf_counter() - began

    tune_score = np.asarray(booster.predict(tune.x), dtype=np.float64)
    tune_rules = report(tune.y, [d.outcome for d in tune.rules], _level([d.outcome for d in tune.rules]))
    review_at = threshold_for(tune.y, tune_score, max(REVIEW_PRECISION_FLOOR, tune_rules["review_precision"] or 0.0))
    decline_at = threshold_for(tune.y, tune_score, max(DECLINE_PRECISION_FLOOR, tune_rules["decline_precision"] or 0.0))
    thresholds = Thresholds(review=review_at, decline=max(decline_at, review_at))

    score: npt.NDArray[np.float64] = np.asarray(booster.predict(test.x), dtype=np.float64).round(SCORE_DIGITS)
    rule_outcomes = [d.outcome for d in test.rules]
    model_outcomes = [thresholds.outcome(float(s)) for s in score]
    combined = [combine(rules, ModelScore(float(s), "", thresholds)).outcome
                for rules, s in zip(test.rules, score, strict=True)]
    metrics = {
        "held_out": {"from_ms": tune_end, "to_ms": end, "payments": len(test.y), "fraud": int(test.y.sum())},
        "rules": report(test.y, rule_outcomes, _level(rule_outcomes)),
        "model": report(test.y, model_outcomes, score),
        "combined": report(test.y, combined, np.maximum(score, _level(rule_outcomes) / 2)),
        "flagged_by_pattern": {
            "rules": recall_by_pattern(test.patterns, rule_outcomes),
            "model": recall_by_pattern(test.patterns, model_outcomes),
            "combined": recall_by_pattern(test.patterns, combined),
        },
        "fit_seconds": round(fit_seconds, 3),
    }
    model_text = booster.model_to_string()
    digest = hashlib.sha256(f"{model_text}{thresholds.review!r}{thresholds.decline!r}".encode()).hexdigest()[:12]
    return {
        "format": ARTEFACT_FORMAT, "format_version": ARTEFACT_VERSION, "version": f"s{seed}-{digest}",
        "features": list(FEATURES), "thresholds": {"review": thresholds.review, "decline": thresholds.decline},
        "metrics": metrics,
        "training": {"seed": seed, "library": f"lightgbm {lgb.__version__}", "params": PARAMS, "rounds": ROUNDS,
                     "split": "fit 0-60 %, thresholds 60-75 %, evaluation 75-100 % of the time span",
                     "data": data_meta or {}, "rows": {"fit": len(fit_part.y), "tune": len(tune.y)}},
        "model": model_text,
    }


def write_artefact(artefact: dict[str, Any], path: Path) -> None:
    """Write atomically (a reader never sees half a file: the service reloads on change)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(artefact, indent=1, sort_keys=True) + "\n")
    partial.replace(path)
