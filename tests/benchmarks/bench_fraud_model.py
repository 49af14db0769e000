"""The fraud model: LightGBM against scikit-learn's HistGradientBoosting, and in-process scoring latency.

Run from the repository root::

    .venv/bin/python -m tests.benchmarks.bench_fraud_model [--seed 7] [--days 60] [--users 400] [--json out.json]

1. **Choice of library.** Simulates traffic (``paystream fraud simulate``'s generator),
   replays it through the feature module, splits it by time as ``fraud train`` does, and
   fits both libraries with comparable settings (150 rounds, 15 leaves, learning rate 0.05,
   one thread). Reports fit time, PR-AUC on the later held-out slice, and the latency of
   scoring one payment (LightGBM: score and SHAP contributions in one call; scikit-learn:
   ``predict_proba`` only, since it has no contributions to give reason codes from).
   scikit-learn is not a dependency of paystream: without it, that row says so.
2. **Serving.** The packaged default model through the service's own path
   (`LoadedModel.score`, one payment per call, reason codes included): p50 / p99 over
   ``--calls`` calls. The target is p99 < 2 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from paystream.fraud.features import FEATURES
from paystream.fraud.model import default_model_path, load
from paystream.fraud.simulate import simulate
from paystream.fraud.train import ROUNDS, average_precision, dataset, fit, service_rules


def _latency(call: Callable[[], object], calls: int) -> dict[str, float]:
    for _ in range(min(200, calls)):
        call()
    samples = []
    for _ in range(calls):
        began = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - began) / 1e6)
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 4), "p99_ms": round(samples[int(len(samples) * 0.99)], 4),
            "max_ms": round(samples[-1], 4)}


def compare(seed: int, days: int, users: int, calls: int) -> dict[str, Any]:
    data = dataset(simulate(seed=seed, days=days, users=users), service_rules())
    start, end = int(data.at_ms.min()), int(data.at_ms.max()) + 1
    fit_part = data.take(data.at_ms < start + (end - start) * 60 // 100)
    test = data.take(data.at_ms >= start + (end - start) * 75 // 100)
    row = test.x[:1]
    results: dict[str, Any] = {"rows": {"fit": len(fit_part.y), "test": len(test.y), "test_fraud": int(test.y.sum())}}

    began = time.perf_counter()
    booster = fit(fit_part.x, fit_part.y, seed)
    results["lightgbm"] = {
        "fit_s": round(time.perf_counter() - began, 3),
        "pr_auc": round(average_precision(test.y, np.asarray(booster.predict(test.x))), 4),
        "score_one": _latency(lambda: booster.predict(row, num_threads=1), calls),
        "score_one_with_contributions": _latency(lambda: booster.predict(row, pred_contrib=True, num_threads=1), calls),
    }
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ImportError:
        results["sklearn_hgb"] = "scikit-learn is not installed (pip install scikit-learn to compare)"
        return results
    hgb = HistGradientBoostingClassifier(max_iter=ROUNDS, max_leaf_nodes=15, learning_rate=0.05,
                                         l2_regularization=1.0, early_stopping=False, random_state=seed)
    began = time.perf_counter()
    hgb.fit(fit_part.x, fit_part.y)
    results["sklearn_hgb"] = {
        "fit_s": round(time.perf_counter() - began, 3),
        "pr_auc": round(average_precision(test.y, hgb.predict_proba(test.x)[:, 1]), 4),
        "score_one": _latency(lambda: hgb.predict_proba(row), calls),
        "score_one_with_contributions": "not available (no SHAP in scikit-learn)",
    }
    return results


def serving(calls: int) -> dict[str, Any]:
    model = load(default_model_path())
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(calls, len(FEATURES))).tolist()
    index = iter(range(10 * calls))
    return {"model": model.version, **_latency(lambda: model.score([rows[next(index) % calls]]), calls)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {"serving": serving(args.calls), "choice": compare(args.seed, args.days, args.users, args.calls)}
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
