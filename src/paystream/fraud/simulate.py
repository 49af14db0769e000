"""A seeded, labelled simulator of wallet traffic: honest users and five fraud patterns.

No fraud dataset can be fetched here, so paystream makes its own. The generative story
(docs/fraud-model.md tells it at length):

1. **Population.** ``users`` wallets, most opened in the first two days, a tenth later
   (young honest accounts exist). Each user lives in a time zone (`UTC_OFFSETS`, spread
   over the world) and has a daily rhythm in its local time (a preferred hour, a few night
   owls), a spending level, a handful of favourite merchants, one circle of friends (P2P),
   a salary paid twice a month as a deposit, and two or three monthly bills.
2. **Honest days.** Each day a user pays merchants (Poisson, more at weekends), sends
   friends money now and then, gets paid on the 1st and 15th, pays bills on their days,
   and rarely makes a large one-off payment to someone new (a used car, a deposit on a
   flat): the honest twin of a scam.
3. **Fraud**, injected at random times, every payment of an attack labelled 1:
   ``account_takeover`` (a new device drains a victim in a burst to fresh accounts),
   ``card_testing`` (a fresh account fires many tiny payments at merchants, some bots fast
   enough to trip the velocity rule), ``mule`` (victims pay one young account, which fans
   the money out to fresh accounts within hours), ``first_large_transfer`` (an established
   user sends many times their usual amount to a new counterparty) and ``impossible_hours``
   (a daytime user suddenly pays new counterparties between 02:00 and 04:30 of *their*
   local night, far from their own rhythm), and ``cash_out`` (a fresh wallet funded with
   stolen money moves it on to fresh accounts seconds to minutes later, in a burst; its
   top-up is labelled honest, since nothing tells it apart when it is made).
4. **Money is real:** balances are tracked; an honest payment the payer cannot cover is
   not made, and drains take what is there.

Every hour of the day is somebody's afternoon and somebody's night, so the absolute UTC
hour says nothing about fraud here (it does not in the world either).

The same seed, days and users give byte-identical files (`random.Random` only, no
wall clock). Output: ``payments.csv`` (time-ordered) and ``meta.json``.
"""

from __future__ import annotations

import csv
import heapq
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

GENERATOR_VERSION = 2  # 2: users in time zones, their days and the impossible hours in local time
START = int(datetime(2026, 1, 5, tzinfo=UTC).timestamp() * 1000)  # a Monday, 00:00 UTC
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000
CURRENCY = "USD"
COLUMNS = ("payment_id", "at_ms", "kind", "source", "destination", "amount", "currency", "device",
           "label", "pattern")
PATTERNS = ("account_takeover", "card_testing", "mule", "first_large_transfer", "impossible_hours", "cash_out")
# Users' time zones (hours from UTC), drawn uniformly: the Americas, Europe and Africa, Asia, Oceania.
UTC_OFFSETS: tuple[float, ...] = (-10.0, -8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0,
                                  5.5, 7.0, 8.0, 9.0, 10.0, 12.0)

# Merchant categories: median payment (cents) and the spread of its log.
_CATEGORIES: dict[str, tuple[int, float]] = {
    "coffee": (450, 0.3), "grocery": (5_500, 0.5), "restaurant": (3_500, 0.5),
    "retail": (6_000, 0.8), "transport": (1_500, 0.4), "online": (4_000, 0.9),
}
# Attacks per user-day, by pattern.
_RATES: dict[str, float] = {
    "account_takeover": 0.0015, "card_testing": 0.0008, "mule": 0.0006,
    "first_large_transfer": 0.002, "impossible_hours": 0.001, "cash_out": 0.001,
}


@dataclass(frozen=True, slots=True)
class SimPayment:
    """One simulated payment, as it is written to ``payments.csv``."""

    payment_id: str
    at_ms: int
    kind: str  # "transfer" | "deposit"
    source: str | None
    destination: str
    amount: int
    currency: str
    device: str
    label: int
    pattern: str  # "honest" or one of PATTERNS


@dataclass(slots=True)
class _User:
    account: str
    opened_ms: int
    peak_hour: float
    night_owl: bool
    spend: float
    income: int
    merchants: list[str]
    bills: list[tuple[int, str, int]]  # (day of month, biller, amount)
    device: str
    utc_offset: float = 0.0  # hours; the user's local time is UTC plus this
    circle: list[str] = field(default_factory=list)
    typical: int = 2_000

    def local_midnight(self, at_ms: int) -> int:
        """The UTC instant of the local midnight that starts the user's day containing ``at_ms``."""
        shift = int(self.utc_offset * HOUR_MS)
        return at_ms - (at_ms + shift) % DAY_MS


@dataclass(order=True, slots=True)
class _Planned:
    """A payment to make at ``at_ms``; ``drain`` (a share of the payer's balance) replaces ``amount``."""

    at_ms: int
    seq: int
    kind: str = field(compare=False)
    source: str | None = field(compare=False)
    destination: str = field(compare=False)
    amount: int = field(compare=False)
    device: str = field(compare=False)
    pattern: str = field(compare=False)
    drain: float | None = field(default=None, compare=False)


class Simulator:
    """Plans a population's days, then makes the payments in time order (module docstring)."""

    def __init__(self, *, seed: int, days: int, users: int) -> None:
        if days < 1 or users < 10:
            raise ValueError("a simulation needs at least 1 day and 10 users")
        self.seed = seed
        self.days = days
        self.n_users = users
        self._rng = random.Random(seed)  # noqa: S311 - a reproducible simulation, not secrets
        self._plan: list[_Planned] = []
        self._seq = 0
        self._fresh = 0
        self.users: list[_User] = []
        self.merchants: list[tuple[str, str]] = []  # (account, category)
        self.billers: list[str] = []

    # -- population --------------------------------------------------------------------

    def _fresh_account(self, role: str) -> str:
        self._fresh += 1
        return f"acc_{role}{self._fresh:06d}"

    def _add(self, at_ms: int, kind: str, source: str | None, destination: str, amount: int,
             device: str, pattern: str = "honest", drain: float | None = None) -> None:
        self._seq += 1
        self._plan.append(_Planned(at_ms, self._seq, kind, source, destination, amount, device, pattern, drain))

    def _populate(self) -> None:
        rng = self._rng
        categories = list(_CATEGORIES)
        count = max(20, self.n_users // 10)
        local = max(10, self.n_users // 3)  # the long tail: corner shops with a handful of customers each
        self.merchants = [(f"acc_m{n:04d}", categories[n % len(categories)]) for n in range(count + local)]
        self.billers = [f"acc_b{n:03d}" for n in range(8)]
        for n in range(self.n_users):
            late = rng.random() < 0.1
            opened = START + (rng.randrange(DAY_MS * max(1, self.days - 1)) if late else rng.randrange(2 * DAY_MS))
            owl = rng.random() < 0.05
            spend = math.exp(rng.gauss(0.0, 0.4))
            favourites = [*rng.sample(self.merchants[:count], k=rng.randint(4, 10)),
                          *rng.sample(self.merchants[count:], k=rng.randint(1, 2))]
            bills = [(rng.randint(1, 28), rng.choice(self.billers), int(rng.uniform(3_000, 20_000)))
                     for _ in range(rng.randint(1, 2))]
            bills.append((rng.randint(1, 5), rng.choice(self.billers), int(rng.uniform(60_000, 200_000))))  # rent
            user = _User(
                account=f"acc_u{n:05d}", opened_ms=opened,
                peak_hour=rng.uniform(20.0, 23.0) if owl else rng.uniform(11.0, 16.0), night_owl=owl,
                spend=spend, income=int(rng.uniform(100_000, 400_000)), merchants=[m for m, _ in favourites],
                bills=bills, device=f"dev_u{n:05d}", utc_offset=rng.choice(UTC_OFFSETS),
            )
            user.typical = int(4_000 * spend)
            self.users.append(user)
        order = list(self.users)
        rng.shuffle(order)
        start = 0
        while start < len(order):
            size = rng.randint(3, 8)
            circle = order[start:start + size]
            for user in circle:
                user.circle = [u.account for u in circle if u is not user]
            start += size

    # -- honest behaviour --------------------------------------------------------------

    def _hour_ms(self, user: _User) -> int:
        """A time of day (ms after midnight) drawn from the user's rhythm."""
        rng = self._rng
        for _ in range(20):
            hour = rng.gauss(user.peak_hour, 3.5)
            if user.night_owl:
                return int((hour % 24.0) * HOUR_MS)
            if 6.5 <= hour < 23.5:
                return int(hour * HOUR_MS)
        return int(user.peak_hour * HOUR_MS)

    def _poisson(self, lam: float) -> int:
        threshold, k, p = math.exp(-lam), 0, 1.0
        while True:
            p *= self._rng.random()
            if p <= threshold:
                return k
            k += 1

    def _merchant_amount(self, user: _User, merchant: str) -> int:
        category = self.merchants[int(merchant[5:])][1]
        median, sigma = _CATEGORIES[category]
        return max(50, int(median * user.spend * math.exp(self._rng.gauss(0.0, sigma))))

    def _plan_honest(self, user: _User) -> None:
        rng = self._rng
        opening = min(300_000, max(500, int(math.exp(rng.gauss(math.log(25_000), 1.2)))))  # 5.00 up to 3,000
        self._add(user.opened_ms, "deposit", None, user.account, opening, user.device)
        if rng.random() < 0.4:  # opened the wallet to pay: a shop within minutes, then perhaps a friend
            at = user.opened_ms + int(rng.uniform(0.5, 5.0) * MINUTE_MS)
            merchant = rng.choice(user.merchants)
            self._add(at, "transfer", user.account, merchant, self._merchant_amount(user, merchant), user.device)
            if user.circle and rng.random() < 0.5:
                self._add(at + int(rng.uniform(0.3, 3.0) * MINUTE_MS), "transfer", user.account,
                          rng.choice(user.circle), max(100, int(2_500 * math.exp(rng.gauss(0.0, 0.8)))),
                          user.device)
        for day in range(self.days):
            # Local day ``day`` (the calendar date of START + day, in the user's time zone).
            midnight = START + day * DAY_MS - int(user.utc_offset * HOUR_MS)
            if midnight + DAY_MS <= user.opened_ms:
                continue
            date = datetime.fromtimestamp((START + day * DAY_MS) / 1000, UTC)
            weekend = date.weekday() >= 5
            day_of_month = date.day
            events: list[tuple[int, str, str | None, str, int]] = []
            for _ in range(self._poisson(3.0 * user.spend * (1.3 if weekend else 1.0))):
                merchant = rng.choice(user.merchants)
                events.append((self._hour_ms(user), "transfer", user.account, merchant,
                               self._merchant_amount(user, merchant)))
            if user.circle and rng.random() < 0.3:
                events.append((self._hour_ms(user), "transfer", user.account, rng.choice(user.circle),
                               max(100, int(2_500 * math.exp(rng.gauss(0.0, 0.8))))))
            if day_of_month in (1, 15):
                events.append((int(rng.gauss(9.0, 0.7) * HOUR_MS), "deposit", None, user.account, user.income))
            for bill_day, biller, amount in user.bills:
                if bill_day == day_of_month:
                    events.append((int(rng.uniform(7.0, 10.0) * HOUR_MS), "transfer", user.account, biller,
                                   int(amount * rng.uniform(0.95, 1.05))))
            if rng.random() < 0.0015:  # the honest twin of a scam: a one-off large payment to someone new
                events.append((self._hour_ms(user), "transfer", user.account, self._fresh_account("s"),
                               int(user.typical * rng.uniform(5.0, 25.0))))
            for offset, kind, source, destination, amount in events:
                at = midnight + offset
                if at > user.opened_ms:
                    self._add(at, kind, source, destination, amount, user.device)
            self._plan_honest_twins(user, midnight)

    def _plan_honest_twins(self, user: _User, midnight: int) -> None:
        """Honest days that look like fraud: a collection among friends (fan-in), savings moved
        to a new account of one's own (a drain to someone new), a run of small payments."""
        rng = self._rng
        at = midnight + self._hour_ms(user)
        if at <= user.opened_ms:
            return
        if user.circle and rng.random() < 0.01:
            for friend in user.circle:
                self._add(at + int(rng.uniform(0, 6) * HOUR_MS), "transfer", friend, user.account,
                          int(rng.uniform(1_000, 5_000)), friend.replace("acc_u", "dev_u"))
        if rng.random() < 0.001:
            own = self._fresh_account("s")
            for n in range(rng.randint(1, 2)):
                self._add(at + n * int(rng.uniform(1, 10) * MINUTE_MS), "transfer", user.account, own, 0,
                          user.device, drain=rng.uniform(0.5, 0.9))
        if rng.random() < 0.003:
            small = [m for m, category in self.merchants if category in ("transport", "coffee")]
            for _ in range(rng.randint(5, 12)):
                at += int(rng.uniform(1, 8) * MINUTE_MS)
                self._add(at, "transfer", user.account, rng.choice(small), rng.randint(100, 500), user.device)

    # -- fraud -------------------------------------------------------------------------

    def _victim(self, at_ms: int, min_age_days: float = 3.0) -> _User | None:
        for _ in range(10):
            user = self._rng.choice(self.users)
            if not user.night_owl and at_ms - user.opened_ms > min_age_days * DAY_MS:
                return user
        return None

    def _account_takeover(self, at: int) -> None:
        rng = self._rng
        victim = self._victim(at)
        if victim is None:
            return
        device = self._fresh_account("d").replace("acc_", "dev_")
        sinks = [self._fresh_account("x") for _ in range(rng.randint(1, 2))]
        count = rng.randint(2, 6)
        for n in range(count):
            at += int(rng.expovariate(1 / 60_000)) + 1_000
            # The last transfer takes what is left; earlier ones take a share of it.
            share = 0.98 if n == count - 1 else rng.uniform(0.3, 0.6)
            self._add(at, "transfer", victim.account, rng.choice(sinks), 0, device, "account_takeover", share)

    def _card_testing(self, at: int) -> None:
        rng = self._rng
        tester = self._fresh_account("x")
        device = tester.replace("acc_", "dev_")
        self._add(at, "deposit", None, tester, int(rng.uniform(2_000, 10_000)), device, "card_testing")
        at += int(rng.uniform(5, 120) * MINUTE_MS)
        gap = 1_500 if rng.random() < 0.3 else 15_000  # some bots are fast enough to trip the velocity rule
        for _ in range(rng.randint(15, 45)):
            at += int(rng.expovariate(1 / gap)) + 200
            merchant = rng.choice(self.merchants)[0]
            self._add(at, "transfer", tester, merchant, rng.randint(50, 300), device, "card_testing")

    def _mule(self, at: int) -> None:
        rng = self._rng
        mule = self._fresh_account("x")
        device = mule.replace("acc_", "dev_")
        self._add(at - int(rng.uniform(1, 5) * DAY_MS), "deposit", None, mule, int(rng.uniform(1_000, 5_000)),
                  device, "mule")
        senders = {v.account: v for _ in range(rng.randint(6, 15)) if (v := self._victim(at)) is not None}
        last = at
        for victim in senders.values():
            when = at + int(rng.uniform(0, 18) * HOUR_MS)
            last = max(last, when)
            self._add(when, "transfer", victim.account, mule, int(rng.uniform(5_000, 80_000)), victim.device, "mule")
        last += int(rng.uniform(0.5, 3) * HOUR_MS)
        outs = rng.randint(2, 5)
        for n in range(outs):
            last += int(rng.uniform(1, 20) * MINUTE_MS)
            share = 0.95 if n == outs - 1 else 1 / (outs - n)
            self._add(last, "transfer", mule, self._fresh_account("x"), 0, device, "mule", share)

    def _first_large_transfer(self, at: int) -> None:
        victim = self._victim(at, min_age_days=7.0)
        if victim is None:
            return
        at = victim.local_midnight(at) + self._hour_ms(victim)
        amount = int(max(victim.typical * self._rng.uniform(10.0, 40.0), 50_000))
        self._add(at, "transfer", victim.account, self._fresh_account("x"), amount, victim.device,
                  "first_large_transfer")

    def _impossible_hours(self, at: int) -> None:
        rng = self._rng
        victim = self._victim(at)
        if victim is None:
            return
        at = victim.local_midnight(at) + int(rng.uniform(2.0, 4.5) * HOUR_MS)
        for _ in range(rng.randint(2, 4)):
            at += int(rng.uniform(1, 15) * MINUTE_MS)
            amount = int(victim.typical * rng.uniform(1.0, 4.0))
            self._add(at, "transfer", victim.account, self._fresh_account("x"), amount, victim.device,
                      "impossible_hours")

    def _cash_out(self, at: int) -> None:
        rng = self._rng
        wallet = self._fresh_account("x")
        device = wallet.replace("acc_", "dev_")
        # The top-up of stolen money is written as honest: when it is made nothing tells it from a new
        # user's first top-up (its chargeback comes weeks later), and a label no feature can see would
        # only teach the model to review every new wallet's first deposit. The moving on is the fraud.
        amount = min(150_000, max(5_000, int(math.exp(rng.gauss(math.log(40_000), 0.8)))))
        self._add(at, "deposit", None, wallet, amount, device)
        at += int(rng.expovariate(1 / 30_000)) + 1_000
        sinks = [self._fresh_account("x") for _ in range(rng.randint(1, 2))]
        count = rng.randint(1, 4)
        for n in range(count):
            share = 0.98 if n == count - 1 else rng.uniform(0.3, 0.6)
            self._add(at, "transfer", wallet, rng.choice(sinks), 0, device, "cash_out", share)
            at += int(rng.expovariate(1 / 10_000)) + 200

    def _plan_fraud(self) -> None:
        attacks = {
            "account_takeover": self._account_takeover, "card_testing": self._card_testing,
            "mule": self._mule, "first_large_transfer": self._first_large_transfer,
            "impossible_hours": self._impossible_hours, "cash_out": self._cash_out,
        }
        user_days = self.n_users * self.days
        for pattern in PATTERNS:
            expected = _RATES[pattern] * user_days
            count = max(1, int(expected) + (1 if self._rng.random() < expected % 1 else 0))
            for _ in range(count):
                attacks[pattern](START + 2 * DAY_MS + self._rng.randrange(max(1, self.days - 2) * DAY_MS))

    # -- making the payments -----------------------------------------------------------

    def run(self) -> list[SimPayment]:
        """Plan everything, then make the payments in time order against tracked balances."""
        self._populate()
        for user in self.users:
            self._plan_honest(user)
        self._plan_fraud()
        heapq.heapify(self._plan)
        end = START + self.days * DAY_MS
        balances: Counter[str] = Counter()
        made: list[SimPayment] = []
        while self._plan:
            planned = heapq.heappop(self._plan)
            if not START <= planned.at_ms < end:
                continue
            amount = planned.amount
            if planned.source is not None:
                available = balances[planned.source]
                if planned.drain is not None:
                    amount = int(available * planned.drain)
                elif planned.pattern != "honest":
                    amount = min(amount, available)
                if amount < 50 or amount > available:
                    continue
                balances[planned.source] -= amount
            balances[planned.destination] += amount
            made.append(SimPayment(
                payment_id=f"pay_sim{len(made) + 1:08d}", at_ms=planned.at_ms, kind=planned.kind,
                source=planned.source, destination=planned.destination, amount=amount, currency=CURRENCY,
                device=planned.device, label=0 if planned.pattern == "honest" else 1, pattern=planned.pattern,
            ))
        return made


def simulate(*, seed: int, days: int, users: int = 400) -> list[SimPayment]:
    """The payments of one simulation, in time order."""
    return Simulator(seed=seed, days=days, users=users).run()


def write(payments: list[SimPayment], out: Path, *, seed: int, days: int, users: int) -> dict[str, object]:
    """Write ``payments.csv`` and ``meta.json`` into ``out``; returns the meta."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "payments.csv").open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for p in payments:
            writer.writerow((p.payment_id, p.at_ms, p.kind, p.source or "", p.destination, p.amount,
                             p.currency, p.device, p.label, p.pattern))
    patterns = Counter(p.pattern for p in payments)
    meta: dict[str, object] = {
        "generator_version": GENERATOR_VERSION, "seed": seed, "days": days, "users": users,
        "start_ms": START, "payments": len(payments), "fraud": sum(p.label for p in payments),
        "patterns": dict(sorted(patterns.items())),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def read(directory: Path) -> list[SimPayment]:
    """The payments a simulation wrote into ``directory`` (FileNotFoundError when there are none)."""
    with (directory / "payments.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{directory / 'payments.csv'} is not a simulator file (columns {reader.fieldnames})")
        return [
            SimPayment(
                payment_id=row["payment_id"], at_ms=int(row["at_ms"]), kind=row["kind"],
                source=row["source"] or None, destination=row["destination"], amount=int(row["amount"]),
                currency=row["currency"], device=row["device"], label=int(row["label"]), pattern=row["pattern"],
            )
            for row in reader
        ]
