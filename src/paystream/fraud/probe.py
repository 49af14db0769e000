"""Offline probes of the model: payments of a known shape, screened as the service screens them.

A probe is a list of `Probed` payments (the facts, and the part each plays). `screen`
replays them through `FeatureState`, the rules (service defaults) and a model, combined as
in mode ``on`` (`domain.combine`), exactly as `handlers.FraudHandlers.screen_all` does, and
returns the outcomes. The shapes here are the ones the e2e test sends through the API
(tests/e2e/test_fraud_model.py), so the rates it states can be measured offline at any
hour, and docs/fraud-model.md's hour table is `hour_table`.

- `honest_cohort`: fresh wallets, each funded by a deposit, paying one of a few merchants
  an ordinary amount a minute later, and (``friend``) another wallet of the cohort 40-60 s
  after that.
- `card_testing_run`: a fresh wallet, funded, pays 25 strangers 2.00 each at once.
- `takeover_burst`: a fresh wallet, funded with 900.00, drained in four transfers to one
  new account within a second.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from paystream.fraud.domain import Decision, Facts, Outcome, Rule, combine, decide
from paystream.fraud.features import FEATURES, HOUR_MS, FeatureState, PaymentFacts, vector
from paystream.fraud.model import LoadedModel

SECOND_MS = 1_000
VELOCITY = FEATURES.index("velocity_1m")


@dataclass(frozen=True, slots=True)
class Probed:
    """One payment of a probe: its facts and its part (``deposit``, ``merchant``, ``friend``, ``attack``)."""

    facts: PaymentFacts
    part: str


class _Ids:
    def __init__(self, tag: str) -> None:
        self._tag = tag
        self._n = 0

    def __call__(self, kind: str) -> str:
        self._n += 1
        return f"{kind}_{self._tag}{self._n:05d}"


def _deposit(ids: _Ids, at_ms: int, wallet: str, amount: int) -> Probed:
    return Probed(PaymentFacts(ids("pay"), at_ms, wallet, None, amount, is_deposit=True), "deposit")


def _pay(ids: _Ids, at_ms: int, source: str, destination: str, amount: int, part: str) -> Probed:
    return Probed(PaymentFacts(ids("pay"), at_ms, source, destination, amount, is_deposit=False), part)


def honest_cohort(start_ms: int, rng: random.Random, *, wallets: int = 40, merchants: int = 8,
                  friend: bool = False, friend_after: tuple[int, int] = (40, 60), tag: str = "h") -> list[Probed]:
    """Fresh wallets funded by a deposit (within 5 s of ``start_ms``) that each pay a merchant
    5.00-50.00 65 s later and, with ``friend``, another wallet of the cohort 10.00-50.00
    ``friend_after`` seconds (drawn uniformly) after that."""
    ids = _Ids(tag)
    shops = [ids("acc_m") for _ in range(merchants)]
    cohort = [ids("acc_w") for _ in range(wallets)]
    probed: list[Probed] = []
    for wallet in cohort:
        funded = start_ms + rng.randrange(5 * SECOND_MS)
        probed.append(_deposit(ids, funded, wallet, rng.randint(20_000, 90_000)))
        paid = funded + 65 * SECOND_MS
        probed.append(_pay(ids, paid, wallet, rng.choice(shops), rng.randint(500, 5_000), "merchant"))
        if friend:
            other = rng.choice([w for w in cohort if w != wallet])
            probed.append(_pay(ids, paid + rng.randint(*friend_after) * SECOND_MS, wallet, other,
                               rng.randint(1_000, 5_000), "friend"))
    return sorted(probed, key=lambda p: p.facts.at_ms)


def card_testing_run(start_ms: int, *, payments: int = 25, tag: str = "c") -> list[Probed]:
    """A fresh wallet funded with 300.00 that pays ``payments`` new accounts 2.00 each within half a second."""
    ids = _Ids(tag)
    tester = ids("acc_t")
    probed = [_deposit(ids, start_ms, tester, 30_000)]
    for n in range(payments):
        probed.append(_pay(ids, start_ms + SECOND_MS + 20 * n, tester, ids("acc_s"), 200, "attack"))
    return probed


def takeover_burst(start_ms: int, *, tag: str = "t") -> list[Probed]:
    """A fresh wallet funded with 900.00 drained in four transfers to one new account within a second."""
    ids = _Ids(tag)
    victim, thief = ids("acc_v"), ids("acc_x")
    probed = [_deposit(ids, start_ms, victim, 90_000)]
    for n, amount in enumerate((40_000, 25_000, 15_000, 9_000)):
        probed.append(_pay(ids, start_ms + SECOND_MS + 250 * n, victim, thief, amount, "attack"))
    return probed


def screen(probed: Iterable[Probed], model: LoadedModel, rules: Sequence[Rule],
           state: FeatureState | None = None) -> list[Decision]:
    """Each payment's decision in mode ``on``, in time order (features from ``state``, fresh by default)."""
    state = state or FeatureState()
    decisions = []
    for one in sorted(probed, key=lambda p: p.facts.at_ms):
        facts = one.facts
        row = vector(state.update(facts), facts)
        rules_say = decide(rules, Facts(amount=facts.amount, currency="USD",
                                        kind="deposit" if facts.is_deposit else "transfer",
                                        recent_payments=int(row[VELOCITY])))
        (score,) = model.score([row])
        decisions.append(combine(rules_say, score))
    return decisions


def outcomes_by_part(probed: Sequence[Probed], decisions: Sequence[Decision]) -> dict[str, Counter[Outcome]]:
    """Per part, how many payments were approved, reviewed and declined."""
    by_part: dict[str, Counter[Outcome]] = {}
    ordered = sorted(probed, key=lambda p: p.facts.at_ms)
    for one, decision in zip(ordered, decisions, strict=True):
        by_part.setdefault(one.part, Counter())[decision.outcome] += 1
    return by_part


def approved_share(counts: Counter[Outcome]) -> float:
    total = counts.total()
    return counts["approve"] / total if total else 0.0


@dataclass(frozen=True, slots=True)
class HourRow:
    """The probes started at one UTC hour: the share of each kind of payment approved."""

    hour: int
    merchant: float  # the honest cohort's payment to a merchant
    friend: float  # the two-payment variant's second payment, to a friend of the cohort
    card_testing: float  # fraud let through
    takeover: float  # fraud let through


def _approved(probe: Sequence[Probed], model: LoadedModel, rules: Sequence[Rule], part: str) -> float:
    return approved_share(outcomes_by_part(probe, screen(probe, model, rules)).get(part, Counter()))


def hour_table(model: LoadedModel, rules: Sequence[Rule], day_ms: int, *, seed: int = 1,
               minute: int = 17) -> list[HourRow]:
    """The probes started at ``day_ms`` (a UTC midnight) + each hour 0-23 (+ ``minute``), each on fresh state.

    Every hour gets the same random draws (``seed``), so any difference between rows is the hour's.
    """
    rows = []
    for hour in range(24):
        start = day_ms + hour * HOUR_MS + minute * 60 * SECOND_MS
        rows.append(HourRow(
            hour=hour,
            merchant=_approved(honest_cohort(start, random.Random(seed)), model, rules, "merchant"),  # noqa: S311
            friend=_approved(honest_cohort(start, random.Random(seed), friend=True), model, rules,  # noqa: S311
                             "friend"),
            card_testing=_approved(card_testing_run(start), model, rules, "attack"),
            takeover=_approved(takeover_burst(start), model, rules, "attack"),
        ))
    return rows
