"""Loading, refusing and reloading fraud model artefacts, and how the score combines with the rules."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from paystream.fraud.domain import Decision, ModelScore, Thresholds, combine
from paystream.fraud.features import FEATURES
from paystream.fraud.model import ModelError, ModelSource, default_model_path, load, parse

BANDS = Thresholds(review=0.3, decline=0.9)


def _artefact(**changes: Any) -> dict[str, Any]:
    artefact: dict[str, Any] = json.loads(default_model_path().read_text())
    artefact.update(changes)
    return artefact


def _write(path: Path, artefact: dict[str, Any]) -> None:
    path.write_text(json.dumps(artefact))
    os.utime(path, ns=(path.stat().st_mtime_ns + 1_000_000, path.stat().st_mtime_ns + 1_000_000))


def test_the_packaged_model_loads_with_this_codes_features() -> None:
    model = load(default_model_path())
    assert model.version.startswith("s7-")
    (score,) = model.score([[0.0] * len(FEATURES)])
    assert 0.0 <= score.score <= 1.0 and score.version == model.version


def test_an_artefact_with_another_feature_list_is_refused() -> None:
    with pytest.raises(ModelError, match="feature list"):
        parse(json.dumps(_artefact(features=[*FEATURES[:-1], "device_new"])))


def test_an_artefact_trained_on_the_absolute_hour_is_refused() -> None:
    # The feature list of artefacts before the features became relative to the account's rhythm.
    stale = [name for name in FEATURES if name not in ("hour_offset", "rhythm", "off_rhythm_share")]
    stale[-1:-1] = ["hour_of_day", "night_share"]
    with pytest.raises(ModelError, match="feature list"):
        parse(json.dumps(_artefact(features=stale)))


def test_a_corrupt_artefact_is_refused() -> None:
    text = default_model_path().read_text()
    with pytest.raises(ModelError, match="not JSON"):
        parse(text[: len(text) // 2])
    with pytest.raises(ModelError, match="does not load"):
        parse(json.dumps(_artefact(model="tree\nnot a lightgbm model")))
    with pytest.raises(ModelError, match="thresholds"):
        parse(json.dumps(_artefact(thresholds={"review": 0.9, "decline": 0.1})))


def test_a_missing_model_leaves_the_service_on_the_rules_and_says_so_once(tmp_path: Path) -> None:
    refused: list[str] = []
    source = ModelSource(tmp_path / "absent.json", on_refused=refused.append)
    assert source.refresh() is False
    assert source.refresh() is False
    assert source.model is None
    assert len(refused) == 1 and "cannot read" in refused[0]


def test_a_new_version_of_the_file_is_picked_up_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    _write(path, _artefact(version="v1"))
    source = ModelSource(path)
    assert source.refresh() is True and source.model is not None and source.model.version == "v1"
    assert source.refresh() is False
    _write(path, _artefact(version="v2", thresholds={"review": 0.5, "decline": 0.95}))
    assert source.refresh() is True
    assert source.model.version == "v2" and source.model.thresholds == Thresholds(0.5, 0.95)


def test_a_corrupt_new_version_keeps_the_model_already_serving(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    _write(path, _artefact(version="good"))
    refused: list[str] = []
    source = ModelSource(path, on_refused=refused.append)
    source.refresh()
    path.write_text("{ half a file")
    os.utime(path, ns=(1, 1))
    assert source.refresh() is False
    assert source.model is not None and source.model.version == "good" and len(refused) == 1


# -- combining with the rules ----------------------------------------------------------------


def _score(value: float) -> ModelScore:
    return ModelScore(score=value, version="v", thresholds=BANDS, top_features=("velocity_1m", "amount_z"))


def test_without_a_model_the_rules_decide_alone() -> None:
    rules = Decision("review", ("amount_in_review_band",))
    assert combine(rules, None) == rules


def test_a_low_score_never_approves_what_the_rules_review_or_decline() -> None:
    for rules in (Decision("review", ("amount_in_review_band",)), Decision("decline", ("amount_over_limit",))):
        assert combine(rules, _score(0.01)) == rules


def test_inside_the_rules_approval_the_score_decides_by_the_bands() -> None:
    approve = Decision("approve", ())
    assert combine(approve, _score(0.1)) == approve
    assert combine(approve, _score(0.5)) == Decision("review", ("model_review", "risk:velocity_1m", "risk:amount_z"))
    assert combine(approve, _score(0.95)).outcome == "decline"


def test_a_high_score_escalates_a_rules_review_to_a_decline_keeping_both_reasons() -> None:
    decided = combine(Decision("review", ("amount_in_review_band",)), _score(0.95))
    assert decided == Decision("decline", ("amount_in_review_band", "model_decline", "risk:velocity_1m",
                                           "risk:amount_z"))


def test_refunds_stay_approved_whatever_the_score() -> None:
    refund = Decision("approve", ("refund",))
    assert combine(refund, _score(0.99)) == refund
