"""The real `Memberlist` over `MemoryNetwork` in virtual time (tests/gossip_sim.py): SWIM end to end."""

from __future__ import annotations

import asyncio
import time

import pytest

from node.gossip import PRESETS, detection_bound
from tests.gossip_sim import ALIVE, DEAD, LEFT, SUSPECT, SimCluster, VirtualTimeLoop, simulate

WARMUP = 20.0  # s of virtual time before a fault: every member has been through a probe round


def test_virtual_time_runs_ten_minutes_of_timers_at_once() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        loop.call_later(300.0, lambda: fired.append(loop.time()))
        await asyncio.sleep(600.0)
        assert fired == [300.0]
        return loop.time()

    started = time.monotonic()
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        assert runner.run(main()) == 600.0
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("preset", ["lan", "local"])
def test_50_members_10_percent_loss_10_minutes_no_false_dead(preset: str) -> None:
    result = simulate(50, loss=0.10, duration=600.0, seed=7, config=preset)
    suspicions = {(c.node, c.incarnation) for c in result.suspicions()}
    print(
        f"\n{preset}: {len(suspicions)} false suspicions, {result.refutations()} refutations, "
        f"{len(result.false_deads())} false DEAD, {result.messages / 50 / 600:.2f} messages/member/s"
    )
    assert len(suspicions) > 50  # the loss did cause suspicions: they were all refuted
    assert result.false_deads() == []


@pytest.mark.parametrize(
    ("preset", "n", "seed"),
    [("local", 3, 1), ("local", 3, 2), ("local", 5, 1), ("local", 5, 2), ("lan", 5, 1), ("local", 50, 1),
     ("lan", 50, 1), ("lan", 50, 2)],
)  # fmt: skip
def test_a_crashed_member_is_dead_everywhere_within_the_bound(preset: str, n: int, seed: int) -> None:
    bound = detection_bound(PRESETS[preset], n)
    result = simulate(n, duration=WARMUP + bound + 1, crash={0: WARMUP}, seed=seed, config=preset)
    crashed = result.names[0]
    everywhere = result.known_by(crashed, [DEAD], after=WARMUP)
    assert everywhere is not None, "not every member saw the crash"
    assert everywhere - WARMUP <= bound
    assert result.false_deads() == []
    if preset == "local" and n <= 5:
        assert bound <= 5.0


def test_a_crash_under_10_percent_loss_is_still_found_by_everyone() -> None:
    result = simulate(50, loss=0.10, duration=200.0, crash={3: WARMUP}, seed=3)
    everywhere = result.known_by(result.names[3], [DEAD], after=WARMUP)
    assert everywhere is not None
    assert everywhere - WARMUP <= 2 * detection_bound(PRESETS["lan"], 50)
    assert result.false_deads() == []


def others(cluster: SimCluster, node: str) -> list[str]:
    return [m for m in cluster.names if m != node]


@pytest.mark.parametrize(("preset", "n"), [("local", 5), ("lan", 5), ("lan", 50)])
def test_a_paused_member_refutes_when_it_resumes(preset: str, n: int) -> None:
    bound = detection_bound(PRESETS[preset], n)

    async def script(c: SimCluster) -> None:
        x = c.names[1]
        await asyncio.sleep(WARMUP)
        c.pause(x)
        assert await c.wait_for(lambda: c.everyone_sees(x, DEAD), bound)
        await asyncio.sleep(5.0)
        incarnation = c.nodes[x].incarnation
        c.resume(x)  # delivers what waited: others' pings that tell it it is dead
        assert await c.wait_for(lambda: c.everyone_sees(x, ALIVE), 10 * PRESETS[preset].probe_interval)
        assert c.nodes[x].incarnation > incarnation
        assert await c.wait_for(lambda: all(c.view(x, m) is ALIVE for m in others(c, x)), bound)

    result = simulate(n, duration=0.0, seed=4, config=preset, script=script)
    assert result.false_deads() == []


@pytest.mark.parametrize("incarnation", [None, 100])
def test_a_crashed_member_that_restarts_is_alive_again(incarnation: int | None) -> None:
    preset, n = "local", 5
    bound = detection_bound(PRESETS[preset], n)

    async def script(c: SimCluster) -> None:
        x = c.names[2]
        await asyncio.sleep(WARMUP)
        c.crash(x)
        assert await c.wait_for(lambda: c.everyone_sees(x, DEAD), bound)
        restarted = c.restart(x, incarnation)  # a new process: incarnation 0 unless given
        assert await c.wait_for(lambda: c.everyone_sees(x, ALIVE), 5.0)
        assert restarted.incarnation > max(c.nodes[o].member(x).incarnation for o in others(c, x)) - 1  # type: ignore[union-attr]

    simulate(n, duration=0.0, seed=5, config=preset, script=script)


@pytest.mark.parametrize(("preset", "n"), [("local", 5), ("lan", 50)])
def test_a_member_that_leaves_is_left_everywhere_quickly(preset: str, n: int) -> None:
    config = PRESETS[preset]

    async def script(c: SimCluster) -> float | None:
        x = c.names[1]
        await asyncio.sleep(WARMUP)
        await c.leave(x)
        return await c.wait_for(lambda: c.everyone_sees(x, LEFT), 10 * config.probe_interval, step=0.01)

    result = simulate(n, duration=WARMUP + 30.0, seed=6, config=preset, script=script)
    assert result.notes["script"] is not None
    assert result.of(result.names[1], DEAD) == []


@pytest.mark.parametrize(("preset", "n"), [("local", 5), ("lan", 5), ("lan", 50)])
def test_a_member_cut_off_is_declared_dead_and_alive_again_after_the_heal(preset: str, n: int) -> None:
    bound = detection_bound(PRESETS[preset], n)
    config = PRESETS[preset]

    async def script(c: SimCluster) -> None:
        x = c.names[1]
        await asyncio.sleep(WARMUP)
        c.cut([x])
        assert await c.wait_for(lambda: c.everyone_sees(x, DEAD, others(c, x)), bound)
        await asyncio.sleep(5.0)
        c.heal()
        assert await c.wait_for(lambda: c.everyone_sees(x, ALIVE), config.reconnect_interval + bound)
        assert await c.wait_for(lambda: all(c.view(x, m) is ALIVE for m in others(c, x)), bound)

    result = simulate(n, duration=0.0, seed=8, config=preset, script=script)
    healthy_dead = [c for c in result.of(state=DEAD) if c.node != result.names[1] != c.observer]
    assert healthy_dead == []  # the cut-off member's stale verdicts did not spread


def test_a_new_member_joins_through_one_seed() -> None:
    async def script(c: SimCluster) -> int:
        await asyncio.sleep(5.0)
        answered = await c.join("newcomer", [c.names[0], "nobody"])
        assert await c.wait_for(lambda: c.everyone_sees("newcomer", ALIVE), 10.0)
        assert all(c.view("newcomer", m) is ALIVE for m in others(c, "newcomer"))
        return answered

    assert simulate(30, duration=0.0, seed=9, script=script).notes["script"] == 1


def test_the_same_seed_gives_the_same_history() -> None:
    def run() -> list[tuple[float, str, str, str]]:
        result = simulate(20, loss=0.1, duration=120.0, crash={1: 30.0}, seed=11)
        return [(c.time, c.observer, c.node, c.state.value) for c in result.changes]

    first = run()
    assert first == run()
    assert any(state == SUSPECT.value for *_, state in first)
