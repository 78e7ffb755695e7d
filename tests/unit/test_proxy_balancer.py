"""The proxy's pure balancer: rotation, ejection, dead nodes and the retry policy."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.proxy.balancer import Backend, Balancer, Failure, OutlierConfig, RetryPolicy


def be(key: str, node: str = "n1", port: int = 8000) -> Backend:
    return Backend(key, "127.0.0.1", port, node)


def keys_of(picks: list[Backend | None]) -> list[str | None]:
    return [b.key if b else None for b in picks]


def test_empty_balancer_picks_nothing() -> None:
    assert Balancer().pick(0.0) is None


def test_round_robin_in_key_order() -> None:
    b = Balancer()
    b.set_endpoints([be("c"), be("a"), be("b")])
    assert keys_of([b.pick(0.0) for _ in range(6)]) == ["a", "b", "c", "a", "b", "c"]


def test_update_continues_from_the_cursor() -> None:
    b = Balancer()
    b.set_endpoints([be("a"), be("b"), be("c")])
    assert keys_of([b.pick(0.0), b.pick(0.0)]) == ["a", "b"]
    removed = b.set_endpoints([be("a"), be("c"), be("d")])
    assert removed == [be("b")]
    assert keys_of([b.pick(0.0) for _ in range(4)]) == ["c", "d", "a", "c"]


def test_changed_address_is_a_new_replica() -> None:
    b = Balancer()
    b.set_endpoints([be("a", port=1)])
    for _ in range(3):
        b.report(be("a", port=1), False, 0.0)  # last one: never ejected, but counted
    removed = b.set_endpoints([be("a", port=2)])
    assert removed == [be("a", port=1)]
    assert b.pick(0.0) == be("a", port=2)


def test_exclude_skips_tried_backends() -> None:
    b = Balancer()
    b.set_endpoints([be("a"), be("b")])
    assert keys_of([b.pick(0.0, exclude={"a"}), b.pick(0.0, exclude={"a", "b"})]) == ["b", None]


# -- ejection -------------------------------------------------------------------------------

REFUSED = Failure.CONNECT_REFUSED
CFG = OutlierConfig(consecutive_failures=3, base_ejection=1.0, max_ejection=4.0)


@pytest.mark.parametrize(("ejections", "seconds"), [(1, 1.0), (2, 2.0), (3, 4.0), (4, 4.0), (10, 4.0)])
def test_ejection_time_doubles_and_caps(ejections: int, seconds: float) -> None:
    assert CFG.ejection_time(ejections) == seconds


@pytest.mark.parametrize(
    ("outcomes", "ejected_at_end"),
    [
        ([False, False], False),
        ([False, False, False], True),
        ([False, False, True, False, False], False),  # a success clears the count
        ([True, False, False, False], True),
    ],
)
def test_consecutive_failures_eject(outcomes: list[bool], ejected_at_end: bool) -> None:
    b = Balancer(CFG)
    b.set_endpoints([be("a"), be("b")])
    for ok in outcomes:
        b.report(be("a"), ok, 0.0)
    assert b.is_ejected(be("a"), 0.0) is ejected_at_end


def test_ejected_backend_returns_after_its_interval_on_probation() -> None:
    b = Balancer(CFG)
    b.set_endpoints([be("a"), be("b")])
    for _ in range(3):
        b.report(be("a"), False, 10.0)
    assert keys_of([b.pick(10.5) for _ in range(3)]) == ["b", "b", "b"]
    assert b.pick(11.0) == be("a")  # interval over: tried again
    assert b.report(be("a"), False, 11.0)  # on probation: one failure re-ejects, for 2 s
    assert b.is_ejected(be("a"), 12.9) and not b.is_ejected(be("a"), 13.0)
    b.report(be("a"), True, 13.0)  # a success clears its record
    for _ in range(2):
        b.report(be("a"), False, 13.0)
    assert not b.is_ejected(be("a"), 13.0)
    b.report(be("a"), False, 13.0)
    assert b.is_ejected(be("a"), 13.9) and not b.is_ejected(be("a"), 14.0)  # back to 1 s


def test_reports_on_an_ejected_or_removed_backend_are_ignored() -> None:
    b = Balancer(CFG)
    b.set_endpoints([be("a"), be("b")])
    for _ in range(3):
        b.report(be("a"), False, 0.0)
    for _ in range(5):
        assert not b.report(be("a"), False, 0.5)  # late reports of earlier connections
    assert not b.is_ejected(be("a"), 1.0)
    assert not b.report(be("zz"), False, 0.0)


def test_last_eligible_backend_is_never_ejected() -> None:
    b = Balancer(CFG)
    b.set_endpoints([be("a"), be("b")])
    for _ in range(3):
        b.report(be("a"), False, 0.0)
    for _ in range(10):
        b.report(be("b"), False, 0.0)
    assert b.pick(0.0) == be("b")


# -- dead nodes -----------------------------------------------------------------------------


def test_remove_nodes_drops_them_until_restored() -> None:
    b = Balancer()
    b.set_endpoints([be("a", "n1"), be("b", "n2"), be("c", "n2"), be("d", "n3")])
    assert b.remove_nodes(["n2"]) == [be("b", "n2"), be("c", "n2")]
    # a stale etcd update still lists n2's endpoints: they stay out
    assert b.set_endpoints([be("a", "n1"), be("b", "n2"), be("d", "n3")]) == []
    assert keys_of([b.pick(0.0) for _ in range(4)]) == ["a", "d", "a", "d"]
    b.restore_nodes(["n2"])
    assert [x.key for x in b.backends] == ["a", "b", "d"]


# -- retry policy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "failures", "expected"),
    [
        (None, [Failure.CONNECT_REFUSED], [True]),
        (
            None,
            [Failure.CONNECT_TIMEOUT, Failure.CONNECT_REFUSED, Failure.CONNECT_REFUSED],
            [True, True, False],
        ),
        ("GET", [Failure.CLOSED_BEFORE_RESPONSE, Failure.CLOSED_BEFORE_RESPONSE], [True, False]),
        ("head", [Failure.CLOSED_BEFORE_RESPONSE], [True]),
        ("POST", [Failure.CLOSED_BEFORE_RESPONSE], [False]),
        ("POST", [Failure.CONNECT_REFUSED], [True]),
        (None, [Failure.CLOSED_BEFORE_RESPONSE], [False]),
        ("GET", [Failure.OTHER], [False]),
    ],
)
def test_retry_policy(method: str | None, failures: list[Failure], expected: list[bool]) -> None:
    attempts = RetryPolicy(max_attempts=3).start(method)
    got = [attempts.failed(be(f"k{i}"), f) for i, f in enumerate(failures)]
    assert got == expected


# -- properties -----------------------------------------------------------------------------

KEYS = st.sets(st.sampled_from([f"t{i:02d}" for i in range(12)]), min_size=1)


@given(keys=KEYS, k=st.integers(1, 5), warmup=st.integers(0, 11))
def test_k_times_n_picks_give_each_backend_k(keys: set[str], k: int, warmup: int) -> None:
    b = Balancer()
    b.set_endpoints(be(x) for x in keys)
    for _ in range(warmup):
        b.pick(0.0)
    counts = Counter(keys_of([b.pick(0.0) for _ in range(k * len(keys))]))
    assert counts == dict.fromkeys(keys, k)


@settings(max_examples=200)
@given(updates=st.lists(st.tuples(KEYS, st.integers(0, 20)), min_size=1, max_size=8))
def test_after_any_update_n_picks_cover_the_new_set_once(updates: list[tuple[set[str], int]]) -> None:
    b = Balancer()
    for keys, picks in updates:
        b.set_endpoints(be(x) for x in keys)
        window = keys_of([b.pick(0.0) for _ in range(len(keys))])
        assert sorted(window) == sorted(keys)  # type: ignore[type-var]
        for _ in range(picks):
            b.pick(0.0)


@settings(max_examples=200)
@given(
    keys=st.sets(st.sampled_from(list("abcdef")), min_size=2),
    events=st.lists(
        st.tuples(st.sampled_from(list("abcdef")), st.booleans(), st.floats(0, 0.5)), max_size=40
    ),
)
def test_ejected_backend_gets_nothing_until_its_interval_ends(
    keys: set[str], events: list[tuple[str, bool, float]]
) -> None:
    b = Balancer(CFG)
    b.set_endpoints(be(x) for x in keys)
    now = 0.0
    until: dict[str, float] = {}
    for key, ok, dt in events:
        now += dt
        picked = b.pick(now)
        assert picked is not None  # never every backend ejected
        assert until.get(picked.key, 0.0) <= now
        if key in keys and b.report(be(key), ok, now):
            assert b.is_ejected(be(key), now)
            until[key] = now + CFG.base_ejection  # every ejection lasts at least this
