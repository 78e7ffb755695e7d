"""The pure rules of the agent's health checks and restart policy, as tables.

`node.agent.health` (starting -> healthy <-> unhealthy -> replace) and
`node.agent.restart` (condition, attempts within a window, crash-loop back-off), driven
with explicit times: no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from node.agent.health import (
    START_INTERVAL,
    Check,
    Health,
    begin,
    check_of,
    docker_verdict,
    needs_replacing,
    observe,
)
from node.agent.restart import (
    MAX_DELAY,
    RESET_AFTER,
    UNHEALTHY,
    Policy,
    RestartState,
    backoff,
    interrupted,
    may_start,
    on_exit,
    on_running,
    policy_of,
    restarted_under,
)
from node.model.domain import TaskStatus
from node.model.spec_lifecycle import HealthCheck, RestartPolicy, TcpCheck
from node.runtime.base import Container, DockerHealth, engine_time
from tests.factories import typed_spec

CHECK = Check("http", 8080, "/health", interval=1.0, retries=3)


def run(check: Check, results: str, start: float = 0.0) -> list[tuple[float, Health, int]]:
    """Feed results ("+" pass, "-" fail), each probe at its due time and answered at
    once; return (due, health after, failures) per probe."""
    state = begin(start)
    out = []
    for r in results:
        due = state.next_at
        state = observe(state, check, r == "+", "ok" if r == "+" else "HTTP 500", due)
        out.append((due, state.health, state.failures))
    return out


def test_a_replica_is_starting_until_its_first_pass() -> None:
    state = begin(10.0)
    assert (state.health, state.next_at) == (Health.STARTING, 10.0), "first probe at once"
    steps = run(CHECK, "--+")
    assert [h for _, h, _ in steps] == [Health.STARTING, Health.STARTING, Health.HEALTHY]
    assert [d for d, _, _ in steps] == [0.0, START_INTERVAL, 2 * START_INTERVAL], "probed fast while starting"


def test_healthy_to_unhealthy_after_retries_and_back_after_one_pass() -> None:
    steps = run(CHECK, "+--" + "-" + "+")
    assert [(d, h, f) for d, h, f in steps] == [
        (0.0, Health.HEALTHY, 0),
        (1.0, Health.HEALTHY, 1),  # one failure: still routable
        (2.0, Health.HEALTHY, 2),
        (3.0, Health.UNHEALTHY, 3),  # retries reached: withdrawn
        (4.0, Health.HEALTHY, 0),  # one pass: back
    ]


def test_unhealthy_within_interval_times_retries_of_the_last_pass() -> None:
    for interval, retries in ((1.0, 3), (2.0, 3), (0.5, 2), (5.0, 1)):
        check = Check("tcp", 80, interval=interval, retries=retries)
        steps = run(check, "+" + "-" * retries)
        last_pass, unhealthy_at = steps[0][0], steps[-1][0]
        assert steps[-1][1] is Health.UNHEALTHY
        assert unhealthy_at - last_pass <= interval * retries


def test_while_starting_a_failure_counts_at_most_once_per_interval() -> None:
    check = Check("tcp", 80, interval=2.0, retries=3)
    steps = run(check, "-" * 9)
    counted = [(d, f) for d, _, f in steps]
    assert counted[:5] == [(0.0, 1), (0.5, 1), (1.0, 1), (1.5, 1), (2.0, 2)]
    unhealthy = next(d for d, h, _ in steps if h is Health.UNHEALTHY)
    assert unhealthy == 4.0, "3 counted failures, one per interval"


def test_failures_in_the_start_period_do_not_count_until_the_first_pass() -> None:
    check = Check("exec", command=("true",), interval=1.0, retries=2, start_period=3.0)
    steps = run(check, "-" * 10)
    assert all(f == 0 for d, _, f in steps if d < 3.0)
    assert next(d for d, h, _ in steps if h is Health.UNHEALTHY) == 4.0

    after_pass = run(check, "+--")  # a pass ends the grace, even inside the period
    assert after_pass[-1][1:] == (Health.UNHEALTHY, 2)


def test_replaced_after_twice_the_retries() -> None:
    steps = run(CHECK, "+" + "-" * 6)
    states = [begin(0.0)]
    for due, _, _ in steps:
        states.append(observe(states[-1], CHECK, due == 0.0, "x", due))
    verdicts = [(s.health, s.failures, needs_replacing(s, CHECK)) for s in states[1:]]
    assert verdicts[3] == (Health.UNHEALTHY, 3, False), "withdrawn, not yet replaced"
    assert verdicts[5] == (Health.UNHEALTHY, 5, False)
    assert verdicts[6] == (Health.UNHEALTHY, 6, True), "2 x retries: replaced"
    recovered = observe(states[5], CHECK, True, "ok", states[5].next_at)
    assert (recovered.health, needs_replacing(recovered, CHECK)) == (Health.HEALTHY, False)


def test_a_slow_probe_does_not_stretch_the_schedule() -> None:
    state = observe(begin(0.0), CHECK, True, "ok", 0.0)
    assert state.next_at == 1.0
    state = observe(state, CHECK, False, "timeout", 1.9)  # took 0.9 s
    assert state.next_at == 2.0, "fixed rate: due + interval"
    state = observe(state, CHECK, False, "timeout", 3.5)  # took longer than the interval
    assert state.next_at == 3.5, "late: the next probe goes at once"


def test_check_of_a_spec() -> None:
    assert check_of(typed_spec("web")) is None and check_of(None) is None
    http = {"http": {"port": 8080, "path": "/health", "status": 204}, "interval": 0.5, "retries": 2}
    assert check_of(typed_spec("web", health=http)) == Check(
        "http", 8080, "/health", 204, interval=0.5, retries=2
    )
    tcp = typed_spec("web", health={"tcp": {"port": 9000}, "timeout": 0.2})
    assert check_of(tcp) == Check("tcp", 9000, timeout=0.2)
    exec_check = check_of(typed_spec("web", health={"exec": ["test", "-f", "/tmp/ok"], "start_period": 5.0}))
    assert exec_check == Check("exec", command=("test", "-f", "/tmp/ok"), start_period=5.0)
    assert exec_check.describe() == "exec test -f /tmp/ok"


@pytest.mark.parametrize(
    ("docker", "health", "replace"),
    [
        (None, Health.NONE, False),
        (DockerHealth("starting"), Health.STARTING, False),
        (DockerHealth("healthy"), Health.HEALTHY, False),
        (DockerHealth("unhealthy", failing_streak=3, retries=3), Health.UNHEALTHY, False),
        (DockerHealth("unhealthy", failing_streak=6, retries=3), Health.UNHEALTHY, True),
    ],
)
def test_docker_healthcheck_verdicts(docker: DockerHealth | None, health: Health, replace: bool) -> None:
    verdict = docker_verdict(docker)
    assert (verdict.health, verdict.replace, verdict.routable) == (
        health,
        replace,
        health in (Health.NONE, Health.HEALTHY),
    )


@pytest.mark.parametrize(
    ("state", "health", "healthy"),
    [
        ("running", "", True),
        ("running", "healthy", True),
        ("running", "starting", False),
        ("running", "unhealthy", False),
        ("exited", "", False),
        ("pending", "", False),
    ],
)
def test_routable_is_what_the_rollout_waits_for(state: str, health: str, healthy: bool) -> None:
    status = TaskStatus("t1", "web", 1, "n1", state, health=health)
    assert status.routable is healthy


# -- restart policy ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "exit_code", "restarts"),
    [
        ("always", 0, True),
        ("always", 1, True),
        ("always", UNHEALTHY, True),
        ("on-failure", 0, False),
        ("on-failure", 137, True),
        ("on-failure", UNHEALTHY, True),
        ("never", 1, False),
        ("never", 0, False),
        ("never", UNHEALTHY, False),
    ],
)
def test_restart_condition(condition: str, exit_code: int | None, restarts: bool) -> None:
    state = on_exit(RestartState(), Policy(condition=condition), exit_code, now=100.0)
    assert state.terminal is not restarts
    assert state.restarts == (1 if restarts else 0)
    if not restarts:
        assert condition in state.given_up
        assert not may_start(state, 1e9)


def test_crash_loop_backs_off_exponentially_and_is_capped() -> None:
    policy = Policy(delay=1.0)
    state, now, delays = RestartState(), 0.0, []
    for _ in range(8):
        state = on_running(state, now)
        now += 2.0  # crashes 2 s after each start
        state = on_exit(state, policy, 1, now)
        delays.append(state.next_at - now)
        assert not may_start(state, state.next_at - 0.01) and may_start(state, state.next_at)
        now = state.next_at
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, MAX_DELAY, MAX_DELAY, MAX_DELAY]
    assert state.restarts == 8


def test_the_back_off_resets_after_the_replica_stayed_up() -> None:
    policy = Policy(delay=0.5)
    state = RestartState()
    for now in (0.0, 1.0, 3.0):
        state = on_exit(on_running(state, now), policy, 1, now + 0.1)
    assert state.next_at - 3.1 == pytest.approx(2.0)
    state = on_running(state, 10.0)
    state = on_exit(state, policy, 1, 10.0 + RESET_AFTER)
    assert state.next_at - (10.0 + RESET_AFTER) == pytest.approx(0.5), "a long healthy life resets the streak"


def test_max_attempts_within_a_window() -> None:
    policy = Policy(max_attempts=2, window=60.0, delay=0.0)
    state = on_exit(RestartState(), policy, 1, 0.0)
    state = on_exit(state, policy, 1, 10.0)
    assert state.restarts == 2 and not state.terminal
    gave_up = on_exit(state, policy, 1, 20.0)
    assert gave_up.terminal and "2 restarts within 60s" in gave_up.given_up
    later = on_exit(state, policy, 1, 65.0)  # the first restart left the window
    assert not later.terminal and later.restarts == 3
    ever = Policy(max_attempts=1)
    once = on_exit(RestartState(), ever, 1, 0.0)
    assert on_exit(once, ever, 1, 1e6).terminal, "window 0: every restart counts"


def test_backoff_and_policy_of_a_stored_spec() -> None:
    assert backoff(Policy(delay=0.0), 5) == 0.0
    assert backoff(Policy(delay=60.0), 3) == 60.0, "a delay above the cap is kept"
    assert policy_of(typed_spec("web")) == Policy() == policy_of(None)
    stored = typed_spec(
        "web", restart={"condition": "on-failure", "max_attempts": 3, "window": 60.0, "delay": 1.0}
    )
    assert policy_of(stored) == Policy(condition="on-failure", max_attempts=3, window=60.0, delay=1.0)


def test_the_defaults_are_the_spec_models_own() -> None:
    """Each default is written once, in node.model.spec_lifecycle: the agent's types take theirs."""
    model = HealthCheck(tcp=TcpCheck(port=1))
    assert Check("tcp", 1) == check_of(typed_spec("web", health={"tcp": {"port": 1}}))
    assert (Check("tcp").interval, Check("tcp").timeout, Check("tcp").retries) == (
        model.interval,
        model.timeout,
        model.retries,
    )
    assert Policy() == RestartPolicy()


# -- an exit that is not the task's own end (issue 11, item 13) ------------------------

STARTED = "2026-12-05T08:00:00.123456789Z"


def exited(
    state: str = "exited", started_at: str = STARTED, exit_code: int = 0, error: str = ""
) -> Container:
    return Container("c1", "web.1.t1", {}, state, exit_code=exit_code, started_at=started_at, error=error)


@pytest.mark.parametrize(
    ("container", "engine_restarted", "reason"),
    [
        (exited(), False, ""),  # a clean exit: the task completed
        (exited(exit_code=1), False, ""),  # a failure: the policy decides
        (exited(exit_code=137), True, ""),  # a failure during an engine restart: still a failure
        (exited(state="created", started_at=""), False, "created but never started"),
        (exited(started_at=""), False, "created but never started"),  # Docker's StartedAt zero
        (exited(error="container stopped by the daemon on shutdown"), False, "the engine stopped it"),
        (exited(), True, "the engine restarted under it"),
    ],
)
@pytest.mark.parametrize("condition", ["always", "on-failure", "never"])
def test_an_exit_not_of_the_tasks_doing_is_not_a_completion(
    container: Container, engine_restarted: bool, reason: str, condition: str
) -> None:
    why = interrupted(container, engine_restarted)
    assert (reason in why) if reason else why == ""
    policy = Policy(condition=condition, max_attempts=1, delay=5.0)
    state = on_exit(RestartState(restarts=3, streak=2), policy, container.exit_code, 100.0, why)
    if why:  # started again at once, whatever the condition, and not an attempt
        assert not state.terminal and may_start(state, 100.0)
        assert (state.restarts, state.streak, state.times) == (4, 2, ())
    else:  # the condition decides, as before
        clean = container.exit_code == 0
        assert state.terminal is (condition == "never" or (condition == "on-failure" and clean))


FINISHED = "2026-12-05T09:00:00.5Z"
AT_FINISH = 1_796_461_200.5  # FINISHED in epoch seconds


@pytest.mark.parametrize(
    ("exit_code", "engine_since", "interrupted_by_it"),
    [
        (0, AT_FINISH + 30.0, True),  # exited, then the engine started anew: its shutdown
        (0, AT_FINISH - 3600.0, False),  # started and exited under the engine that runs now
        (0, AT_FINISH - 10.0, True),  # started before it, exit written as it restored: its shutdown
        (0, AT_FINISH - 100.0, False),  # well after the engine's start: a completion (live restore)
        (0, 0.0, False),  # the engine's start is not known: judged as before
        (1, AT_FINISH + 30.0, False),  # a failure stays a failure
    ],
)
def test_an_exit_0_under_the_engine_before_is_the_engines_shutdown(
    exit_code: int, engine_since: float, interrupted_by_it: bool
) -> None:
    """shoald and the engine both down (a host reboot): nothing saw a gap, but the exit 0
    came before the engine that runs now started, or the container started before it and
    its exit was only written as the engine restored it (Docker dates it then)."""
    assert engine_time(STARTED) < AT_FINISH - 100.0
    c = replace(exited(exit_code=exit_code), finished_at=FINISHED)
    why = interrupted(c, False, engine_since)
    assert ("before the engine's restart" in why) is interrupted_by_it, why


def test_a_gap_is_an_engine_restart_only_if_the_engine_started_since_it_was_seen() -> None:
    """Before, any gap was one: a listing that failed once ran a finished job again."""
    seen = 1_000.0
    assert not restarted_under(False, seen, 0.0), "no gap, no restart"
    assert restarted_under(True, seen, 0.0), "the start not known: the gap alone decides"
    assert restarted_under(True, seen, seen + 5.0), "started after the container was seen"
    assert restarted_under(True, seen, seen - 0.5), "/proc's start may be up to 1 s early"
    assert not restarted_under(True, seen, seen - 60.0), "up all along: a completion"


def test_an_unreadable_finish_time_is_judged_as_before() -> None:
    c = replace(exited(), finished_at="yesterday")
    assert interrupted(c, False, AT_FINISH) == ""


def test_check_of_a_grpc_spec() -> None:
    whole = check_of(typed_spec("api", health={"grpc": {"port": 50051}}))
    assert whole == Check("grpc", 50051, service="") and whole.describe() == "grpc health :50051"
    one = check_of(typed_spec("api", health={"grpc": {"port": 50051, "service": "shop.Cart"}}))
    assert one is not None and one.service == "shop.Cart"
    assert one.describe() == "grpc health :50051 shop.Cart"
