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
3. **Hours** (``--part hours``): the offline probes of `fraud.probe` (an honest cohort of
   new wallets, a card-testing run, an account-takeover burst) started at every UTC hour,
   screened by the default model as in mode ``on``: the table of docs/fraud-model.md.
4. **Demo and bench traffic** (``--part traffic``): the transfers `paystream demo` (3,000)
   and `make bench` (10,000 over 2,000 wallets) send, planned by their own code, timed at
   the ~210 payments/s a stack here completes, screened offline as in mode ``on``: the
   share the model would hold for review or decline (why the default mode stays shadow).
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

from paystream.fraud.features import FEATURES, PaymentFacts
from paystream.fraud.model import default_model_path, load
from paystream.fraud.probe import Probed, hour_table, outcomes_by_part, screen
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


def hours() -> list[dict[str, Any]]:
    from datetime import UTC, datetime

    day = int(datetime(2026, 12, 7, tzinfo=UTC).timestamp() * 1000)
    rows = hour_table(load(default_model_path()), service_rules(), day)
    return [{"hour": r.hour, "merchant": r.merchant, "friend_40_60s": r.friend, "card_testing_through": r.card_testing,
             "takeover_through": r.takeover} for r in rows]


def _timed(specs: list[Any], start_ms: int, per_second: float, scenario_of: Callable[[Any], str]) -> list[Probed]:
    probed = []
    for n, spec in enumerate(specs):
        at = start_ms + int(n * 1000 / per_second)
        deposit = spec.source is None
        facts = PaymentFacts(payment_id=f"pay_{n:06d}_{spec.key[:8]}", at_ms=at,
                             subject=spec.destination if deposit else spec.source,
                             counterparty=None if deposit else spec.destination, amount=spec.amount,
                             is_deposit=deposit)
        probed.append(Probed(facts, scenario_of(spec)))
    return probed


def _held(name: str, deposits: list[Any], transfers: list[Any], rate: float = 210.0) -> dict[str, Any]:
    start = 1_800_000_000_000
    probe = _timed(deposits, start, rate, lambda spec: "funding")
    probe += _timed(transfers, start + int(len(deposits) * 1000 / rate) + 2_000, rate, lambda spec: spec.scenario)
    counts = outcomes_by_part(probe, screen(probe, load(default_model_path()), service_rules()))
    result: dict[str, Any] = {"traffic": name}
    for part, c in sorted(counts.items()):
        result[part] = {"payments": c.total(), "approve": c["approve"], "review": c["review"], "decline": c["decline"],
                        "held_share": round(1 - c["approve"] / c.total(), 4)}
    return result


def traffic() -> list[dict[str, Any]]:
    import random

    from paystream.tools.bench import BenchPlan
    from paystream.tools.demo import DemoPlan, FraudLimits, Wallets, plan_deposits, plan_transfers

    rng = random.Random(1)
    limits = FraudLimits.from_settings()
    plan = DemoPlan.for_payments(3000, limits)
    ids = [f"acc_demo{n:05d}" for n in range(plan.ordinary_wallets + plan.review + plan.unfunded_wallets + 1)]
    review_end = plan.ordinary_wallets + plan.review
    wallets = Wallets(ordinary=ids[:plan.ordinary_wallets], review=ids[plan.ordinary_wallets:review_end],
                      unfunded=ids[review_end:-1], burst=ids[-1])
    transfers = plan_transfers(plan, wallets, limits, rng)
    demo = _held("paystream demo (3,000 transfers)", plan_deposits(wallets, transfers, limits, rng), transfers)
    bench = BenchPlan(10_000, 2_000, deposit_amount=limits.review_threshold - 1)
    bench_wallets = [f"acc_bench{n:05d}" for n in range(2_000)]
    bench_transfers = bench.transfers(bench_wallets, rng)
    return [demo, _held("make bench (10,000 over 2,000 wallets)", bench.deposits(bench_wallets, bench_transfers),
                        bench_transfers)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--part", choices=("all", "serving", "choice", "hours", "traffic"), default="all")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    if args.part in ("all", "serving"):
        results["serving"] = serving(args.calls)
    if args.part in ("all", "choice"):
        results["choice"] = compare(args.seed, args.days, args.users, args.calls)
    if args.part in ("all", "hours"):
        results["hours"] = hours()
    if args.part in ("all", "traffic"):
        results["traffic"] = traffic()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
