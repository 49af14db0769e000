"""The fraud model's features, computed the same way online (Redis) and offline (replay).

Training and scoring must not skew, so there is one definition here, in three parts:

1. `PaymentFacts`: what a payment tells us (who pays whom, how much, when).
2. The *state update*: each payment reads its accounts' history, then adds itself to it.
   It exists twice, written to agree exactly: `FeatureState` (Python, for replaying
   simulated or stored history offline) and ``_SCRIPT`` (one Redis Lua script per payment,
   atomic, for the running service, in `OnlineFeatures`). Both return a `Raw` (the history
   as it stood before the payment); the Lua script does only additions and multiplications
   on numbers Python hands it (the log of the amount, the sine and cosine of the time of
   day), formatted ``%.17g``,
   so the two agree to the bit. ``tests/integration/test_features.py`` holds them to it.
3. `vector`: `Raw` + facts → the model's inputs, in `FEATURES` order. Shared by both paths.

The *subject* of a payment is the account it is partitioned by (the payer; the payee of a
deposit). Its history: an exponentially weighted mean and variance of the log amounts it
paid, its *rhythm* (an exponentially weighted circular mean of the times of day it paid
at, and the share of its payments made more than six hours from that mean), its payments
in the last minute, hour and day, the
counterparties it paid in the last 90 days (novelty) and 24 hours (fan-out), the accounts
that paid it in 24 hours (fan-in), and when paystream first saw it (age). Redis is not the
source of truth: ``payment_facts`` in PostgreSQL keeps every screened payment, and
`OnlineFeatures` is rebuilt from it by replay when Redis has lost its state.

No feature reads the absolute wall-clock hour. Wallets live in every time zone, and an
hour that is a user's afternoon is another's night: a model that learnt the UTC hour
sends a whole continent's evening to review (docs/fraud-model.md, "Hour independence").
The time of day enters only as the distance from the account's own rhythm, which a
constant shift of all of its payments (another time zone) leaves unchanged, and which is
0 for an account with no history (a new account has no "wrong" hour).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import redis.asyncio as redis
from redis.exceptions import RedisError

from paystream.contracts.events import PaymentOrder
from paystream.platform.errors import TransientError

FEATURES: tuple[str, ...] = (
    "amount_log",        # log(1 + amount in minor units)
    "amount_z",          # how far the log amount is from the subject's EW mean, in EW standard deviations
    "history_count",     # log(1 + payments the subject made before)
    "velocity_1m",       # the subject's payments in the last minute, this one included
    "velocity_1h",
    "velocity_24h",
    "amount_1h_log",     # log(1 + what the subject paid in the last hour, this one included)
    "counterparty_new",  # 1: the subject has not paid this counterparty in 90 days
    "fan_out_24h",       # distinct counterparties the subject paid in 24 h
    "fan_in_24h",        # distinct accounts that paid the subject in 24 h
    "dest_fan_in_24h",   # distinct accounts that paid the destination in 24 h
    "account_age_days",  # since paystream first saw the subject
    "hour_offset",       # hours (0-12) between this payment's time of day and the subject's EW mean one
    "rhythm",            # length of that EW mean of unit vectors: 1 = always the same hour, 0 = none
    "off_rhythm_share",  # EW share of the subject's payments made more than 6 h from its then mean hour
    "is_deposit",
)

ALPHA = 0.1  # weight of the newest payment in the exponentially weighted statistics
VARIANCE_FLOOR = 0.25  # keeps amount_z finite for an account that always pays the same
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
NOVELTY_MS = 90 * DAY_MS
STATE_TTL_MS = 90 * DAY_MS
RESULT_TTL_MS = 2 * DAY_MS
STATE_VERSION = 2  # the layout of the Redis state; a new one starts empty and is rebuilt from PostgreSQL
PREFIX = f"fraud:features:v{STATE_VERSION}"


@dataclass(frozen=True, slots=True)
class PaymentFacts:
    """What the features look at. ``counterparty`` is the other wallet (None for a deposit)."""

    payment_id: str
    at_ms: int
    subject: str
    counterparty: str | None
    amount: int
    is_deposit: bool

    @property
    def log_amount(self) -> float:
        return math.log(self.amount + 1.0)

    @property
    def clock(self) -> tuple[float, float]:
        """The time of day as a point on the unit circle (sine, cosine); midnight UTC is (0, 1)."""
        angle = 2.0 * math.pi * (self.at_ms % DAY_MS) / DAY_MS
        return math.sin(angle), math.cos(angle)


@dataclass(frozen=True, slots=True)
class Raw:
    """The subject's history as it stood before the payment, plus the windows counted with it."""

    history: int
    mean: float
    var: float
    clock_sin: float  # the EW mean of the subject's payments' `PaymentFacts.clock`
    clock_cos: float
    off_rhythm: float
    first_seen_ms: int
    velocity_1m: int
    velocity_1h: int
    velocity_24h: int
    amount_1h: int
    counterparty_new: int
    fan_out_24h: int
    fan_in_24h: int
    dest_fan_in_24h: int


def rhythm(raw: Raw, facts: PaymentFacts) -> tuple[float, float]:
    """(hours between this payment's time of day and the subject's mean one, the rhythm's strength).

    Both 0 for a subject with no payments yet, or whose times of day cancel out.
    """
    strength = math.sqrt(raw.clock_sin * raw.clock_sin + raw.clock_cos * raw.clock_cos)
    if raw.history == 0 or strength < 1e-9:
        return 0.0, 0.0
    s, c = facts.clock
    cosine = (raw.clock_sin * s + raw.clock_cos * c) / strength
    return math.acos(max(-1.0, min(1.0, cosine))) * 12.0 / math.pi, strength


def vector(raw: Raw, facts: PaymentFacts) -> list[float]:
    """The model's inputs for one payment, in `FEATURES` order."""
    x = facts.log_amount
    z = (x - raw.mean) / math.sqrt(raw.var + VARIANCE_FLOOR) if raw.history > 0 else 0.0
    offset, strength = rhythm(raw, facts)
    return [
        x,
        z,
        math.log(raw.history + 1.0),
        float(raw.velocity_1m),
        float(raw.velocity_1h),
        float(raw.velocity_24h),
        math.log(raw.amount_1h + 1.0),
        float(raw.counterparty_new),
        float(raw.fan_out_24h),
        float(raw.fan_in_24h),
        float(raw.dest_fan_in_24h),
        max(0.0, (facts.at_ms - raw.first_seen_ms) / DAY_MS),
        offset,
        strength,
        raw.off_rhythm,
        1.0 if facts.is_deposit else 0.0,
    ]


@dataclass(frozen=True, slots=True)
class Stats:
    """The subject's exponentially weighted statistics (the part of its state every payment updates)."""

    n: int = 0
    mean: float = 0.0
    var: float = 0.0
    clock_sin: float = 0.0
    clock_cos: float = 0.0
    off_rhythm: float = 0.0


def ew_update(before: Stats, x: float, clock: tuple[float, float]) -> Stats:
    """The statistics once an outgoing payment of log amount ``x`` at time of day ``clock`` is added.

    A payment is *off rhythm* when it is more than six hours (a quarter of the circle) from
    the mean time of day, that is when the dot product of the two is negative: no square
    root or trigonometry is needed, so the Lua script does the same operations in the same
    order (keep them in step) and gets the same bits.
    """
    s, c = clock
    if before.n == 0:
        return Stats(1, x, 0.0, s, c, 0.0)
    a = ALPHA
    d = x - before.mean
    off = 1.0 if before.clock_sin * s + before.clock_cos * c < 0 else 0.0
    return Stats(
        before.n + 1, before.mean + a * d, (1.0 - a) * (before.var + a * d * d),
        before.clock_sin + a * (s - before.clock_sin), before.clock_cos + a * (c - before.clock_cos),
        before.off_rhythm + a * (off - before.off_rhythm),
    )


# -- offline: the update in Python ---------------------------------------------------------


@dataclass(slots=True)
class _Account:
    first_seen: int | None = None
    stats: Stats = field(default_factory=Stats)
    payments: list[tuple[int, str, int]] = field(default_factory=list)  # (at, member, amount), sorted
    payees: dict[str, int] = field(default_factory=dict)  # counterparty → last paid at
    payers: dict[str, int] = field(default_factory=dict)  # payer → last paid at


def _trim(last_seen: dict[str, int], cutoff: int) -> None:
    for key in [k for k, at in last_seen.items() if at <= cutoff]:
        del last_seen[key]


def _touch(last_seen: dict[str, int], key: str, at: int) -> None:
    if last_seen.get(key, at) <= at:
        last_seen[key] = at


class FeatureState:
    """Every account's history in memory: `update` is the Lua script's twin (module docstring)."""

    def __init__(self) -> None:
        self._accounts: dict[str, _Account] = {}
        self._done: dict[str, Raw] = {}

    def _account(self, account_id: str) -> _Account:
        account = self._accounts.get(account_id)
        if account is None:
            account = self._accounts[account_id] = _Account()
        return account

    def update(self, facts: PaymentFacts) -> Raw:
        """The payment's `Raw`, then its effect on the history; a payment seen before changes nothing."""
        if facts.payment_id in self._done:
            return self._done[facts.payment_id]
        at = facts.at_ms
        subject = self._account(facts.subject)
        first_seen = subject.first_seen if subject.first_seen is not None else at
        subject.first_seen = first_seen
        before = subject.stats

        payments = subject.payments
        del payments[:bisect.bisect_right(payments, at - DAY_MS, key=lambda p: p[0])]
        bisect.insort(payments, (at, f"{facts.payment_id}:{facts.amount}", facts.amount))
        v1m = len(payments) - bisect.bisect_right(payments, at - MINUTE_MS, key=lambda p: p[0])
        start_1h = bisect.bisect_right(payments, at - HOUR_MS, key=lambda p: p[0])
        amount_1h = sum(p[2] for p in payments[start_1h:])

        counterparty_new = fan_out = dest_fan_in = 0
        outgoing = not facts.is_deposit
        if outgoing and facts.counterparty is not None:
            _trim(subject.payees, at - NOVELTY_MS)
            counterparty_new = int(facts.counterparty not in subject.payees)
            _touch(subject.payees, facts.counterparty, at)
            fan_out = sum(1 for last in subject.payees.values() if last > at - DAY_MS)
            other = self._account(facts.counterparty)
            _trim(other.payers, at - DAY_MS)
            _touch(other.payers, facts.subject, at)
            dest_fan_in = len(other.payers)
            if other.first_seen is None:
                other.first_seen = at
        _trim(subject.payers, at - DAY_MS)
        fan_in = len(subject.payers)
        if outgoing:
            subject.stats = ew_update(before, facts.log_amount, facts.clock)
        raw = Raw(
            history=before.n, mean=before.mean, var=before.var, clock_sin=before.clock_sin,
            clock_cos=before.clock_cos, off_rhythm=before.off_rhythm, first_seen_ms=first_seen,
            velocity_1m=v1m, velocity_1h=len(payments) - start_1h, velocity_24h=len(payments),
            amount_1h=amount_1h, counterparty_new=counterparty_new, fan_out_24h=fan_out, fan_in_24h=fan_in,
            dest_fan_in_24h=dest_fan_in,
        )
        self._done[facts.payment_id] = raw
        return raw


def replay(history: Iterable[PaymentFacts]) -> list[list[float]]:
    """Feature vectors of a history replayed in order from nothing (training, offline checks)."""
    state = FeatureState()
    return [vector(state.update(facts), facts) for facts in history]


# -- online: the update in Redis -----------------------------------------------------------

_SCRIPT = """
-- KEYS: 1 subject state, 2 subject payments, 3 subject payees, 4 subject payers,
--       5 counterparty state, 6 counterparty payers, 7 this payment's result
-- ARGV: 1 payment id, 2 at ms, 3 amount, 4 outgoing, 5 has counterparty, 6 subject id,
--       7 counterparty id, 8 log amount, 9 clock sine, 10 alpha, 11 state ttl, 12 result ttl,
--       13 clock cosine
local done = redis.call('GET', KEYS[7])
if done then return done end
local at = tonumber(ARGV[2])
local day, hour, minute = 86400000, 3600000, 60000
local state_ttl = tonumber(ARGV[11])
local function fmt(v) return string.format('%.17g', v) end

local st = redis.call('HMGET', KEYS[1], 'first_seen', 'n', 'mean', 'var', 'cs', 'cc', 'off')
local first_seen = tonumber(st[1]) or at
local n = tonumber(st[2]) or 0
local mean = tonumber(st[3]) or 0
local var = tonumber(st[4]) or 0
local cs = tonumber(st[5]) or 0
local cc = tonumber(st[6]) or 0
local off = tonumber(st[7]) or 0
redis.call('HSETNX', KEYS[1], 'first_seen', ARGV[2])

redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', at - day)
redis.call('ZADD', KEYS[2], at, ARGV[1] .. ':' .. ARGV[3])
local v1m = redis.call('ZCOUNT', KEYS[2], '(' .. (at - minute), '+inf')
local last_hour = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. (at - hour), '+inf')
local amount_1h = 0
for _, member in ipairs(last_hour) do
  amount_1h = amount_1h + tonumber(string.match(member, ':(%d+)$'))
end
local v24h = redis.call('ZCARD', KEYS[2])

local cp_new, fan_out, dest_fan_in = 0, 0, 0
local outgoing = ARGV[4] == '1'
if outgoing and ARGV[5] == '1' then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', at - 90 * day)
  if not redis.call('ZSCORE', KEYS[3], ARGV[7]) then cp_new = 1 end
  redis.call('ZADD', KEYS[3], 'GT', at, ARGV[7])
  fan_out = redis.call('ZCOUNT', KEYS[3], '(' .. (at - day), '+inf')
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', at - day)
  redis.call('ZADD', KEYS[6], 'GT', at, ARGV[6])
  dest_fan_in = redis.call('ZCARD', KEYS[6])
  redis.call('HSETNX', KEYS[5], 'first_seen', ARGV[2])
  redis.call('PEXPIRE', KEYS[3], state_ttl)
  redis.call('PEXPIRE', KEYS[5], state_ttl)
  redis.call('PEXPIRE', KEYS[6], day)
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', at - day)
local fan_in = redis.call('ZCARD', KEYS[4])

if outgoing then
  local x, s, c, a = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[13]), tonumber(ARGV[10])
  local new_mean, new_var, new_cs, new_cc, new_off
  if n == 0 then
    new_mean, new_var, new_cs, new_cc, new_off = x, 0, s, c, 0
  else
    local d = x - mean
    local flag = 0
    if cs * s + cc * c < 0 then flag = 1 end
    new_mean = mean + a * d
    new_var = (1 - a) * (var + a * d * d)
    new_cs = cs + a * (s - cs)
    new_cc = cc + a * (c - cc)
    new_off = off + a * (flag - off)
  end
  redis.call('HSET', KEYS[1], 'n', n + 1, 'mean', fmt(new_mean), 'var', fmt(new_var), 'cs', fmt(new_cs),
             'cc', fmt(new_cc), 'off', fmt(new_off))
end
redis.call('PEXPIRE', KEYS[1], state_ttl)
redis.call('PEXPIRE', KEYS[2], day)

local out = table.concat({n, fmt(mean), fmt(var), fmt(cs), fmt(cc), fmt(off), first_seen, v1m, #last_hour, v24h,
                          amount_1h, cp_new, fan_out, fan_in, dest_fan_in}, ',')
redis.call('SET', KEYS[7], out, 'PX', ARGV[12])
return out
"""


def _parse(reply: bytes | str) -> Raw:
    text = reply.decode() if isinstance(reply, bytes) else reply
    p = text.split(",")
    return Raw(
        history=int(p[0]), mean=float(p[1]), var=float(p[2]), clock_sin=float(p[3]), clock_cos=float(p[4]),
        off_rhythm=float(p[5]), first_seen_ms=int(p[6]), velocity_1m=int(p[7]), velocity_1h=int(p[8]),
        velocity_24h=int(p[9]), amount_1h=int(p[10]), counterparty_new=int(p[11]), fan_out_24h=int(p[12]),
        fan_in_24h=int(p[13]), dest_fan_in_24h=int(p[14]),
    )


class OnlineFeatures:
    """The feature state in Redis: one atomic script call per payment, a batch per round trip.

    A payment recorded again (a redelivery, a re-screen) gets the `Raw` of its first time
    and changes nothing. Keys of two accounts meet in one script, so this needs one Redis
    (or a cluster-aware key layout, which it does not have yet).
    """

    def __init__(self, client: redis.Redis, *, prefix: str = PREFIX) -> None:
        self._client = client
        self._prefix = prefix
        self._script = client.register_script(_SCRIPT)

    def _keys(self, facts: PaymentFacts) -> list[str]:
        p, s = self._prefix, facts.subject
        c = facts.counterparty or ""
        return [f"{p}:a:{s}", f"{p}:v:{s}", f"{p}:o:{s}", f"{p}:i:{s}", f"{p}:a:{c}", f"{p}:i:{c}",
                f"{p}:r:{facts.payment_id}"]

    async def record(self, batch: Sequence[PaymentFacts]) -> list[Raw]:
        """Each payment's `Raw`, in order, with its effect on the history (TransientError if Redis is away)."""
        if not batch:
            return []
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for facts in batch:
                    sine, cosine = facts.clock
                    await self._script(
                        keys=self._keys(facts),
                        args=[
                            facts.payment_id, facts.at_ms, facts.amount, int(not facts.is_deposit),
                            int(facts.counterparty is not None), facts.subject, facts.counterparty or "",
                            repr(facts.log_amount), repr(sine), repr(ALPHA), STATE_TTL_MS, RESULT_TTL_MS,
                            repr(cosine),
                        ],
                        client=pipe,
                    )
                replies = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise TransientError(f"feature store unavailable: {exc!r}") from exc
        return [_parse(reply) for reply in replies]


def facts_of_order(order: PaymentOrder, at_ms: int) -> PaymentFacts:
    """The facts of a payment the service screens, seen at ``at_ms``."""
    deposit = order.kind == "deposit"
    subject = order.account_key
    other = order.destination_account_id if order.source_account_id == subject else order.source_account_id
    return PaymentFacts(payment_id=order.payment_id, at_ms=at_ms, subject=subject,
                        counterparty=None if deposit else other, amount=order.amount, is_deposit=deposit)
