"""A short training run: on a small simulated set the model beats the rules' recall at equal or better precision."""

from __future__ import annotations

import json
import time

import numpy as np

from paystream.fraud.model import parse
from paystream.fraud.simulate import simulate
from paystream.fraud.train import average_precision, train


def test_the_model_doubles_the_rules_recall_at_equal_or_better_precision() -> None:
    began = time.perf_counter()
    artefact = train(simulate(seed=3, days=45, users=300), seed=3)
    metrics = artefact["metrics"]
    rules, model = metrics["rules"], metrics["model"]
    print(f"\nheld out: {metrics['held_out']['payments']} payments, {metrics['held_out']['fraud']} fraud")
    for name, m in (("rules", rules), ("model", model)):
        print(f"{name}: review precision {m['review_precision']} recall {m['review_recall']}, "
              f"decline precision {m['decline_precision']} recall {m['decline_recall']}, PR-AUC {m['pr_auc']}")
    print(f"trained and evaluated in {time.perf_counter() - began:.1f} s")
    assert metrics["held_out"]["fraud"] >= 30
    assert model["review_recall"] >= 2 * rules["review_recall"]
    assert model["review_precision"] >= rules["review_precision"]
    assert model["pr_auc"] >= 2 * rules["pr_auc"]
    assert model["decline_precision"] is not None and model["decline_precision"] >= 0.9


def test_the_artefact_it_writes_loads_and_scores() -> None:
    artefact = train(simulate(seed=4, days=12, users=60), seed=4)
    model = parse(json.dumps(artefact))
    assert model.version == artefact["version"]
    (score,) = model.score([[0.0] * len(artefact["features"])])
    assert 0.0 <= score.score <= 1.0


def test_average_precision_of_a_perfect_ranking_is_one_and_ties_count_together() -> None:
    y = np.asarray([1, 1, 0, 0], dtype=np.int8)
    assert average_precision(y, np.asarray([0.9, 0.8, 0.2, 0.1])) == 1.0
    assert average_precision(y, np.asarray([0.5, 0.5, 0.5, 0.5])) == 0.5
