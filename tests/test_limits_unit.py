"""Prices, limits, budgets and fair queues without servers: pure functions and the in-process store,
with an injected clock (nothing sleeps to wait for a window or a period to pass)."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from router.limits import (
    Admission,
    BudgetPeriod,
    Limiter,
    LimitExceeded,
    Limits,
    LocalStore,
    Window,
    anthropic_headers,
    check_limits,
    duration_text,
    estimate_tokens,
    openai_headers,
    period_bounds,
)
from router.pricing import Price, PriceTable, cost_usd
from router.usage import RequestRecord, rollup_rows

# --- prices -------------------------------------------------------------------------------------


def test_backend_specific_price_wins_over_a_more_specific_global_one():
    table = PriceTable(
        [
            Price(1, "gpt-4o-mini", None, 1.0, 2.0),
            Price(2, "gpt-4o*", 7, 3.0, 4.0),
        ]
    )
    assert table.match("gpt-4o-mini", 7).id == 2
    assert table.match("gpt-4o-mini", 8).id == 1
    assert table.match("gpt-4o", 8) is None


def test_exact_name_beats_glob_and_the_longest_glob_wins():
    table = PriceTable(
        [
            Price(1, "*", None, 9.0, 9.0),
            Price(2, "gpt-*", None, 5.0, 5.0),
            Price(3, "gpt-4o*", None, 2.5, 10.0),
            Price(4, "gpt-4o", None, 2.0, 8.0),
        ]
    )
    assert table.match("gpt-4o", None).id == 4
    assert table.match("gpt-4o-2024-08-06", None).id == 3
    assert table.match("gpt-3.5-turbo", None).id == 2
    assert table.match("llama-3", None).id == 1
    assert table.match(None, None) is None


def test_equal_globs_pick_the_oldest_price():
    table = PriceTable([Price(9, "llama*", None, 1.0, 1.0), Price(3, "*llama", None, 2.0, 2.0)])
    assert table.match("llama", None).id == 3


def test_cost_charges_cached_and_cache_write_tokens_at_their_own_prices():
    price = Price(1, "claude*", None, 3.0, 15.0, cached_input_per_mtok=0.3, cache_write_per_mtok=3.75)
    # 10,000 prompt tokens of which 6,000 read from the cache and 2,000 written to it, 1,000 out.
    cost = cost_usd(price, 10_000, 1_000, cached_tokens=6_000, cache_write_tokens=2_000)
    assert cost == pytest.approx((2_000 * 3.0 + 6_000 * 0.3 + 2_000 * 3.75 + 1_000 * 15.0) / 1e6)
    # Without cache prices, cached tokens cost the input price.
    plain = Price(2, "x", None, 3.0, 15.0)
    assert cost_usd(plain, 10_000, 1_000, 6_000, 2_000) == pytest.approx((10_000 * 3.0 + 1_000 * 15.0) / 1e6)
    assert PriceTable([price]).cost("gpt", None, 10, 10) is None


# --- pure limit helpers ---------------------------------------------------------------------------


def test_periods_are_calendar_day_iso_week_and_month_in_utc():
    now = datetime(2026, 12, 31, 23, 59, tzinfo=UTC).timestamp()  # a Thursday
    assert period_bounds(BudgetPeriod.DAY, now) == (
        datetime(2026, 12, 31, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert period_bounds(BudgetPeriod.WEEK, now) == (
        datetime(2026, 12, 28, tzinfo=UTC),
        datetime(2027, 1, 4, tzinfo=UTC),
    )
    assert period_bounds(BudgetPeriod.MONTH, now) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )


def test_estimate_uses_the_body_and_the_completion_ceiling():
    assert estimate_tokens({"max_tokens": 100}, 400, 1024) == 200
    assert estimate_tokens({"max_completion_tokens": 50}, 40, 1024) == 60
    assert estimate_tokens({"max_output_tokens": 7}, 0, 1024) == 7
    assert estimate_tokens({"max_tokens": True}, 0, 1024) == 1024
    assert estimate_tokens({}, 8, 16) == 18


def test_limits_are_checked():
    with pytest.raises(ValueError, match="rpm"):
        check_limits(Limits(rpm=0))
    with pytest.raises(ValueError, match="budgetUsd applies to users only"):
        check_limits(Limits(budget_usd=5), for_backend=True)
    assert check_limits(Limits(rpm=1, tpm=2, max_concurrent=3, budget_usd=0.5)) == Limits(1, 2, 3, 0.5)
    assert not Limits() and Limits(max_concurrent=1)


def test_window_slides_in_one_second_steps():
    window = Window()
    window.add(100, 3)
    window.add(130, 2)
    window.advance(159)
    assert window.total == 5
    window.advance(160)  # second 100 has left the 60 s window
    assert window.total == 2
    assert window.wait_s(2, 160.5) == pytest.approx(29.5)
    window.adjust(130, -1, 160)
    assert window.total == 1
    window.adjust(100, 4, 160)  # gone bucket: the surplus counts now
    assert window.total == 5


def test_duration_text_is_openai_style():
    assert duration_text(0.02) == "20ms"
    assert duration_text(6) == "6s"
    assert duration_text(90) == "1m30s"


# --- the limiter on the in-process store ------------------------------------------------------


@dataclass(frozen=True)
class Who:
    id: int
    name: str
    limits: Limits


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


T0 = datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC).timestamp()


def limiter(clock: Clock, **kwargs) -> Limiter:
    return Limiter(LocalStore(), clock=clock, **kwargs)


async def test_no_limits_touch_no_store():
    lim = limiter(Clock(T0))
    admission = await lim.admit(Who(1, "a", Limits()), Who(2, "b", Limits()), 10)
    assert admission.settled and not admission.limited
    assert lim.store.windows == {} and lim.store.slots == {}


async def test_rpm_admits_exactly_the_limit_per_sliding_minute():
    clock = Clock(T0)
    lim = limiter(clock)
    user = Who(1, "alice", Limits(rpm=3))
    admitted = [await lim.admit(user, None) for _ in range(3)]
    assert [a.requests.remaining for a in admitted] == [2, 1, 0]
    with pytest.raises(LimitExceeded) as refused:
        await lim.admit(user, None)
    assert refused.value.openai_type == "requests" and refused.value.openai_code == "rate_limit_exceeded"
    assert refused.value.retry_after_s == pytest.approx(60)
    assert refused.value.headers["x-ratelimit-remaining-requests"] == "0"
    clock.now += 59.9
    with pytest.raises(LimitExceeded):
        await lim.admit(user, None)
    clock.now = T0 + 60
    assert (await lim.admit(user, None)).requests.remaining == 2  # all three left the window together


async def test_tpm_reserves_the_estimate_and_settles_with_real_usage():
    clock = Clock(T0)
    lim = limiter(clock)
    user = Who(1, "alice", Limits(tpm=1000))
    first = await lim.admit(user, None, tokens=900)
    assert first.tokens.remaining == 100
    second = await lim.admit(user, None, tokens=900)  # room left: admitted, overshoots by this request
    assert second.tokens.remaining == 0
    with pytest.raises(LimitExceeded) as refused:
        await lim.admit(user, None, tokens=1)
    assert refused.value.openai_type == "tokens"
    lim.settle(first, 50, None)
    lim.settle(second, 40, None)
    assert (await lim.admit(user, None, tokens=10)).tokens.remaining == 1000 - 50 - 40 - 10


async def test_failed_requests_give_their_reservation_back_and_cut_streams_keep_it():
    lim = limiter(Clock(T0))
    user = Who(1, "alice", Limits(tpm=1000))
    failed = await lim.admit(user, None, tokens=600)
    lim.settle(failed, 0, None, failed=True)
    cut = await lim.admit(user, None, tokens=300)
    lim.settle(cut, 0, None)  # usage unknown: the reservation stands
    view = await lim.quota(user, "user")
    assert view.tokens == 300


async def test_user_concurrency_is_refused_at_once_and_freed_by_settle():
    lim = limiter(Clock(T0))
    user = Who(1, "alice", Limits(max_concurrent=1))
    held = await lim.admit(user, None)
    with pytest.raises(LimitExceeded) as refused:
        await lim.admit(user, None)
    assert refused.value.kind == "concurrency" and refused.value.retry_after_s == 1.0
    assert (await lim.quota(user, "user")).in_flight == 1
    lim.settle(held, 5, None)
    lim.settle(held, 5, None)  # settling twice changes nothing
    await lim.admit(user, None)


async def test_budget_refuses_until_the_next_period():
    clock = Clock(datetime(2026, 3, 31, 23, 0, tzinfo=UTC).timestamp())
    lim = limiter(clock)
    user = Who(1, "alice", Limits(budget_usd=1.0, budget_period=BudgetPeriod.MONTH))
    first = await lim.admit(user, None)
    lim.settle(first, 10, 0.6)
    second = await lim.admit(user, None)  # $0.60 < $1: admitted
    lim.settle(second, 10, 0.6)
    with pytest.raises(LimitExceeded) as refused:
        await lim.admit(user, None)
    assert refused.value.openai_type == "insufficient_quota" and refused.value.openai_code == "insufficient_quota"
    assert refused.value.retry_after_s == pytest.approx(3600)
    assert "2026-04-01T00:00:00Z" in refused.value.message
    view = await lim.quota(user, "user")
    assert view.spent_usd == pytest.approx(1.2) and view.period_end == datetime(2026, 4, 1, tzinfo=UTC)
    clock.now = datetime(2026, 4, 1, 0, 0, 1, tzinfo=UTC).timestamp()
    await lim.admit(user, None)
    assert (await lim.quota(user, "user")).spent_usd == 0


async def test_budget_counters_are_seeded_from_the_rollups():
    clock = Clock(T0)
    lim = limiter(clock)
    user = Who(1, "alice", Limits(budget_usd=2.0, budget_period=BudgetPeriod.DAY))
    others = [Who(i, f"u{i}", Limits(budget_usd=2.0, budget_period=BudgetPeriod.DAY)) for i in (3, 4)]
    monthly = Who(5, "eve", Limits(budget_usd=2.0, budget_period=BudgetPeriod.MONTH))
    asked = []

    async def spent(user_ids, start, end):  # one question per period, for all its users
        asked.append((sorted(user_ids), start, end))
        return {1: 2.5, 5: 0.5}

    await lim.seed_budgets([user, Who(2, "bob", Limits()), *others, monthly], spent)
    assert asked == [
        ([1, 3, 4], *period_bounds(BudgetPeriod.DAY, T0)),
        ([5], *period_bounds(BudgetPeriod.MONTH, T0)),
    ]
    with pytest.raises(LimitExceeded):
        await lim.admit(user, None)
    await lim.admit(others[0], None)
    assert (await lim.quota(monthly, "user")).spent_usd == pytest.approx(0.5)


async def test_headers_for_openai_and_anthropic():
    lim = limiter(Clock(T0))
    admission = await lim.admit(Who(1, "a", Limits(rpm=10, tpm=100)), None, tokens=30)
    headers = openai_headers(admission)
    assert headers == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "70",
        "x-ratelimit-reset-tokens": "1m0s",
    }
    anthropic = anthropic_headers(admission, T0)
    assert anthropic["anthropic-ratelimit-requests-remaining"] == "9"
    assert anthropic["anthropic-ratelimit-tokens-reset"] == "2026-03-10T12:01:00Z"


async def test_backend_rpm_refuses_with_the_backend_named():
    lim = limiter(Clock(T0))
    backend = Who(5, "gpu", Limits(rpm=1))
    await lim.admit(Who(1, "a", Limits()), backend)
    with pytest.raises(LimitExceeded) as refused:
        await lim.admit(Who(2, "b", Limits()), backend)
    assert refused.value.scope == "backend" and "gpu" in refused.value.message


# --- fair queue -----------------------------------------------------------------------------------


async def test_backend_queue_serves_users_round_robin():
    lim = limiter(Clock(T0), queue_timeout_s=5)
    backend = Who(5, "gpu", Limits(max_concurrent=1))
    flooder, other = Who(1, "flood", Limits()), Who(2, "other", Limits())
    first = await lim.admit(flooder, backend)
    order: list[str] = []

    async def request(user: Who, label: str) -> None:
        admission = await lim.admit(user, backend)
        order.append(label)
        await asyncio.sleep(0)
        lim.settle(admission, 1, None)

    flood = [asyncio.create_task(request(flooder, f"f{i}")) for i in range(5)]
    await asyncio.sleep(0)
    late = asyncio.create_task(request(other, "o"))
    for _ in range(3):
        await asyncio.sleep(0)
    assert lim.queues[5].depth == 6
    lim.settle(first, 1, None)
    await asyncio.gather(*flood, late)
    # The other user waited behind at most one of the flooder's requests, not five.
    assert order.index("o") <= 1, order
    assert lim.queues[5].depth == 0


async def test_queue_timeout_and_disconnect_leave_the_queue():
    lim = limiter(Clock(T0), queue_timeout_s=0.05)
    backend = Who(5, "gpu", Limits(max_concurrent=1))
    user = Who(1, "a", Limits(max_concurrent=5))
    held = await lim.admit(user, backend)
    with pytest.raises(LimitExceeded) as refused:
        await lim.admit(user, backend)
    assert refused.value.kind == "queue" and "QUEUE_TIMEOUT_S" in refused.value.message
    assert lim.queues[5].depth == 0 and len(lim.store.slots["lim:u:1:slots"]) == 1  # the user slot went back

    gone = asyncio.Event()
    lim.queue_timeout_s = 30
    waiting = asyncio.create_task(lim.admit(user, backend, disconnected=gone.wait))
    await asyncio.sleep(0.01)
    assert lim.queues[5].depth == 1
    gone.set()
    from router.limits import ClientDisconnected

    with pytest.raises(ClientDisconnected):
        await waiting
    assert lim.queues[5].depth == 0
    lim.settle(held, 1, None)
    assert lim.store.slots == {}


# --- rollups ----------------------------------------------------------------------------------------


def test_rollup_rows_sum_a_batch_per_hour_user_backend_model():
    def record(minute: int, user: int, cost: float | None, status: int = 200) -> RequestRecord:
        r = RequestRecord("r", "/v1/chat/completions", user_id=user, user_name=f"u{user}", backend_id=1, model="m")
        r.prompt_tokens, r.completion_tokens, r.total_tokens = 10, 5, 15
        r.status_code, r.cost_usd, r.latency_ms = status, cost, 2.0
        r.created_at = datetime(2026, 3, 10, 12, minute, tzinfo=UTC)
        return r

    rows = rollup_rows([record(1, 1, 0.5), record(59, 1, None, 500), record(2, 2, 0.25)])
    assert len(rows) == 2
    first = rows[0]
    assert first[:6] == (datetime(2026, 3, 10, 12, tzinfo=UTC), 1, 1, "m", "u1", None)
    assert first[6:] == (2, 1, 20, 10, 30, 0, 0, 0.5, 4.0)


async def test_limits_reached_are_told_to_on_limit():
    lim = limiter(Clock(T0), queue_timeout_s=0.05)
    events = []
    lim.on_limit.connect(events.append)
    user, backend = Who(1, "alice", Limits(rpm=1, budget_usd=0.0)), Who(5, "gpu", Limits(max_concurrent=1))
    with pytest.raises(LimitExceeded):  # a budget of 0 USD: refused at once
        await lim.admit(user, backend)
    bob = Who(2, "bob", Limits(rpm=5))
    held = await lim.admit(bob, backend)
    with pytest.raises(LimitExceeded):  # queued (the backend is at its maxConcurrent), then timed out
        await lim.admit(bob, backend)
    lim.settle(held, 1, None)
    assert [(e.kind, e.scope, e.subject_name, e.user_id, e.backend_id, e.limit) for e in events] == [
        ("BUDGET", "user", "alice", 1, 5, 0.0),
        ("CONCURRENCY", "backend", "gpu", 2, 5, 1),
        ("QUEUE_FULL", "backend", "gpu", 2, 5, 1),
    ]
    assert events[0].retry_after_s > 0 and events[1].retry_after_s == 0 and events[2].retry_after_s == 1.0


class GeneralStore(LocalStore):
    """The in-process store seen as any other store: the limiter takes its general path (no fast path)."""


async def test_the_in_process_fast_path_decides_and_counts_as_the_general_path():
    import random

    rnd = random.Random(7)
    clock = Clock(T0)
    fast, general = Limiter(LocalStore(), clock=clock), Limiter(GeneralStore(), clock=clock)

    def seen(answer: object) -> object:  # slot members are unique names, numbered differently by the paths
        return (
            dataclasses.replace(answer, slots=[k for k, _ in answer.slots]) if isinstance(answer, Admission) else answer
        )

    users = [
        Who(1, "a", Limits(rpm=7, tpm=900, max_concurrent=3, budget_usd=0.05, budget_period=BudgetPeriod.DAY)),
        Who(2, "b", Limits(tpm=500)),
        Who(3, "c", Limits()),
    ]
    backends = [Who(5, "gpu", Limits(rpm=11, tpm=2000, max_concurrent=50)), Who(6, "cpu", Limits()), None]
    held: list[tuple[object, object]] = []
    for _ in range(3000):
        clock.now += rnd.choice([0.0, 0.01, 0.4, 3.0, 61.0 if rnd.random() < 0.02 else 0.2])
        if held and rnd.random() < 0.45:
            one, two = held.pop(rnd.randrange(len(held)))
            tokens, cost, failed = rnd.choice([0, 30, 400]), rnd.choice([None, 0.0, 0.004]), rnd.random() < 0.2
            fast.settle(one, tokens, cost, failed=failed)
            general.settle(two, tokens, cost, failed=failed)
        else:
            user, backend, tokens = rnd.choice(users), rnd.choice(backends), rnd.choice([0, 10, 120, 600])
            answers = []
            for lim in (fast, general):
                try:
                    answers.append(await lim.admit(user, backend, tokens))
                except LimitExceeded as exc:
                    answers.append(
                        (exc.kind, exc.scope, exc.message, exc.retry_after_s, exc.headers, seen(exc.admission))
                    )
            assert seen(answers[0]) == seen(answers[1])
            if not isinstance(answers[0], tuple):
                held.append((answers[0], answers[1]))
        assert {k: (list(map(list, w.buckets)), w.total) for k, w in fast.store.windows.items()} == {
            k: (list(map(list, w.buckets)), w.total) for k, w in general.store.windows.items()
        }
        assert {k: len(v) for k, v in fast.store.slots.items()} == {k: len(v) for k, v in general.store.slots.items()}
        assert fast.store.spend == general.store.spend
