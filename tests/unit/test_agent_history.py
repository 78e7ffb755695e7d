"""`node.agent.history`: which exited containers a node keeps for their logs (decision 71)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.agent.history import Known, finished_key, history_name, prune
from node.runtime.base import LABELS, Container


def kept(cid: str, service: str = "web", slot: int = 1, finished: str = "", uid: str = "u1") -> Container:
    labels = {LABELS.SERVICE: service, LABELS.SLOT: str(slot), LABELS.TASK: f"t-{cid}", LABELS.UID: uid}
    return Container(
        id=cid, name=f"{service}.{slot}.t-{cid}", labels=labels, state="exited", finished_at=finished
    )


def at(second: int, fraction: str = "") -> str:
    return f"2026-12-06T16:00:{second:02d}{fraction}Z"


WEB = {"web": Known("u1")}


@pytest.mark.parametrize(
    ("containers", "limit", "services", "removed"),
    [
        pytest.param([], 5, WEB, [], id="nothing kept"),
        pytest.param(
            [kept("a", finished=at(1)), kept("b", finished=at(2))], 2, WEB, [], id="within the limit"
        ),
        pytest.param(
            [kept("a", finished=at(3)), kept("b", finished=at(1)), kept("c", finished=at(2))],
            2,
            WEB,
            ["b"],
            id="the oldest by finish time goes",
        ),
        pytest.param(
            [kept("a", finished=at(1)), kept("b", finished=at(2)), kept("c", finished=at(3))],
            1,
            WEB,
            ["a", "b"],
            id="oldest first",
        ),
        pytest.param(
            [
                kept("a", slot=1, finished=at(1)),
                kept("b", slot=2, finished=at(2)),
                kept("c", slot=1, finished=at(3)),
            ],
            1,
            WEB,
            ["a"],
            id="per slot",
        ),
        pytest.param([kept("a", finished=at(1))], 0, WEB, ["a"], id="limit 0: none kept"),
        pytest.param([kept("a", service="gone", finished=at(1))], 5, WEB, ["a"], id="a removed service"),
        pytest.param([kept("a", uid="old", finished=at(1))], 5, WEB, ["a"], id="another incarnation"),
        pytest.param([kept("a", uid="", finished=at(1))], 5, WEB, [], id="no uid label: its name's"),
        pytest.param(
            [kept("a", service="gone", finished=at(1))], 5, None, [], id="services unknown: nothing for that"
        ),
        pytest.param(
            [kept("a", finished=at(1)), kept("b", finished=at(2))],
            1,
            None,
            ["a"],
            id="services unknown: the limit",
        ),
        pytest.param(
            [kept("a", service="job", finished=at(1))], 5, {"job": Known("u1", job=True)}, ["a"], id="job"
        ),
        pytest.param(
            [kept("a", finished=""), kept("b", finished=at(1))], 1, WEB, ["a"], id="never run: the oldest"
        ),
        pytest.param(
            [kept("a", finished=at(1, ".5")), kept("b", finished=at(1, ".123456789"))],
            1,
            WEB,
            ["b"],
            id="Docker's fractions without trailing zeros",
        ),
    ],
)
def test_prune(
    containers: list[Container], limit: int, services: dict[str, Known] | None, removed: list[str]
) -> None:
    assert prune(containers, limit, services) == removed


def test_a_slot_whose_volumes_are_being_removed_keeps_nothing() -> None:
    containers = [kept("a", slot=1, finished=at(1)), kept("b", slot=2, finished=at(2))]
    assert prune(containers, 5, WEB, cleared={("web", "2")}) == ["b"]
    assert prune(containers, 5, WEB, cleared={("api", "1")}) == []


def test_finished_key_pads_the_fraction() -> None:
    whole, half = kept("a", finished=at(1)), kept("b", finished=at(1, ".5"))
    assert finished_key(whole) < finished_key(half) < finished_key(kept("c", finished=at(2)))


def test_history_name_is_given_once() -> None:
    c = kept("0123456789abcdef")
    named = replace(c, name=history_name(c))
    assert named.name == "web.1.t-0123456789abcdef.0123456789ab"
    assert history_name(named) == named.name


@given(
    st.lists(st.tuples(st.integers(1, 3), st.integers(0, 59)), max_size=30),
    st.integers(0, 6),
)
def test_at_most_limit_stay_per_slot_and_they_are_the_newest(
    items: list[tuple[int, int]], limit: int
) -> None:
    containers = [kept(f"c{i}", slot=slot, finished=at(sec)) for i, (slot, sec) in enumerate(items)]
    gone = set(prune(containers, limit, WEB))
    for slot in (1, 2, 3):
        mine = sorted((c for c in containers if c.labels[LABELS.SLOT] == str(slot)), key=finished_key)
        stay = [c for c in mine if c.id not in gone]
        assert len(stay) == min(limit, len(mine))
        assert stay == mine[len(mine) - len(stay) :], "the newest stay"
