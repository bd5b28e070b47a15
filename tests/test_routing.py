"""router/routing.py: candidate backends, weighted round-robin, least-busy order, passive health."""

from __future__ import annotations

from router.catalog import BackendEntry, UserEntry
from router.routing import HealthTracker, WeightedRoundRobin, candidate_backends, order_least_busy


def backend(id_: int, name: str = "", weight: int = 1, active: bool = True, override=None) -> BackendEntry:
    return BackendEntry(id_, name or f"b{id_}", f"http://b{id_}/v1", None, None, override, None, weight, active)


def user(all_backends: bool = False, permitted=()) -> UserEntry:
    return UserEntry(1, "u", None, True, all_backends, frozenset(permitted))


def test_candidates_respect_activity_models_and_permissions():
    backends = [backend(1), backend(2), backend(3, active=False)]
    models = {1: {"m"}, 2: {"m"}, 3: {"m"}}
    permitted, forbidden = candidate_backends(backends, models.get, user(permitted={1}), "m")
    assert [b.id for b in permitted] == [1] and forbidden
    permitted, forbidden = candidate_backends(backends, models.get, user(all_backends=True), "m")
    assert [b.id for b in permitted] == [1, 2] and not forbidden
    assert candidate_backends(backends, models.get, user(True), "other") == ([], False)


def test_weighted_round_robin_is_smooth_and_proportional():
    rr = WeightedRoundRobin()
    backends = [backend(1, weight=5), backend(2, weight=1), backend(3, weight=1)]
    firsts = [rr.order(backends)[0].id for _ in range(70)]
    assert firsts.count(1) == 50 and firsts.count(2) == 10 and firsts.count(3) == 10
    assert "1111111" not in "".join(map(str, firsts))  # smooth: never 7 in a row
    order = rr.order(backends)
    assert sorted(b.id for b in order) == [1, 2, 3]  # the rest follow as fallbacks


def test_zero_weight_backend_is_only_a_fallback():
    rr = WeightedRoundRobin()
    backends = [backend(1, weight=0), backend(2, weight=1)]
    assert all(rr.order(backends)[0].id == 2 for _ in range(5))
    assert rr.order(backends)[1].id == 1


def test_least_busy_orders_by_in_flight_per_weight():
    counts = {1: 4, 2: 1, 3: 2}
    order = order_least_busy([backend(1, weight=4), backend(2), backend(3)], counts.get)
    assert [b.id for b in order] == [1, 2, 3]  # 4/4 == 1/1 < 2/1; ties keep the given order
    counts[1] = 5
    assert [b.id for b in order_least_busy([backend(1, weight=4), backend(2), backend(3)], counts.get)] == [2, 1, 3]


def test_health_cooldown_and_probe():
    now = [0.0]
    health = HealthTracker(threshold=2, cooldown_s=10, clock=lambda: now[0])
    assert not health.record_failure(1) and health.is_available(1)
    assert health.record_failure(1)
    assert not health.is_available(1) and not health.is_healthy(1)
    now[0] = 11
    assert health.is_available(1)  # one probe after the cooldown
    assert not health.is_available(1)  # ... only one
    health.record_failure(1)  # the probe failed: a new cooldown
    now[0] = 15
    assert not health.is_available(1)
    now[0] = 22
    assert health.is_available(1)
    health.record_success(1)
    assert health.is_healthy(1) and health.is_available(1)


def test_routes_by_model_last_as_long_as_the_snapshot_and_the_model_lists():
    from types import SimpleNamespace

    from router import protocols
    from router.catalog import Snapshot
    from router.proxy import route_by_model

    a, b = (BackendEntry(i, n, f"http://{n}/v1", None, None, None, None, 1, True) for i, n in ((1, "a"), (2, "b")))
    user = UserEntry(1, "u", None, True, True, frozenset())
    lists = {1: frozenset({"m"}), 2: frozenset()}
    models = SimpleNamespace(version=1, models_of=lambda backend_id: lists[backend_id])
    catalog = SimpleNamespace(snapshot=Snapshot(users_by_id={1: user}, backends_by_id={1: a, 2: b}))
    rt = SimpleNamespace(catalog=catalog, models=models, order_backends=list)
    chat = protocols.ADAPTERS["/v1/chat/completions"]

    def names(who: UserEntry) -> list[str]:
        return [t.name for t in route_by_model(rt, who, "m", chat).targets]  # type: ignore[arg-type]

    assert names(user) == ["a"]
    lists[2] = frozenset({"m"})
    assert names(user) == ["a"]  # the lists' version did not move: what was worked out stands
    models.version = 2
    assert names(user) == ["a", "b"]
    narrowed = UserEntry(1, "u", None, True, False, frozenset({2}))
    catalog.snapshot = Snapshot(users_by_id={1: narrowed}, backends_by_id={1: a, 2: b})
    assert names(narrowed) == ["b"]
    assert names(user) == ["a", "b"]  # a user of the older snapshot keeps its own permissions...
    assert names(narrowed) == ["b"]  # ...and is not kept in the newer snapshot's routes
