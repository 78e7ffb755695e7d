"""The autoscaler's pure decision (leader.autoscale), the spec's `autoscale:` section
(node.model.spec_autoscale) and the node's rate window (node.model.load), table-style."""

from __future__ import annotations

import math

import pytest

from leader.autoscale import Measure, State, decide, measure, percentile, recommend
from node.model.load import AutoscaleStatus, Decision, LoadRecord, RateWindow, ServiceLoad
from node.model.spec import SpecError, parse_spec
from node.model.spec_autoscale import Autoscale, keep_count

BASE = "name: web\nimage: shoal-demo/web:1\nports: [{container: 8080, published: 18080, protocol: http}]\n"


def _cfg(target: str = "{requests_per_replica: 50}", extra: str = "") -> Autoscale:
    spec = parse_spec(BASE + f"autoscale: {{min: 1, max: 10, target: {target}{extra}}}\n", "w.yaml")
    assert spec.autoscale is not None
    return spec.autoscale


REQ = Measure("requests_per_replica", None)


def _m(value: float | None, metric: str = "requests_per_replica") -> Measure:
    return Measure(metric, value, "" if value is not None else "no node reported its load lately")


# (replicas, value per replica, expected recommendation) with target 50/s, min 1, max 10
@pytest.mark.parametrize(
    ("replicas", "value", "expected"),
    [
        (2, 50.0, 2),  # on target
        (2, 54.0, 2),  # within the 10% band: steady
        (2, 46.0, 2),
        (2, 56.0, 3),  # just out of it: ceil(2 * 56 / 50)
        (2, 250.0, 10),  # a spike: one step, capped at max
        (4, 10.0, 1),  # idle-ish: ceil(4 * 10 / 50) = 1
        (4, 0.0, 1),  # nothing: min
        (3, 100.0, 6),
    ],
)
def test_target_tracking_recommendation(replicas: int, value: float, expected: int) -> None:
    assert recommend(_cfg(), replicas, value) == expected


def test_steady_load_never_changes_the_count() -> None:
    cfg, state = _cfg(), State()
    for i, value in enumerate([48.0, 52.0, 50.5, 47.0, 53.9, 46.1] * 20):  # noise around the target
        out = decide(cfg, 4, _m(value), state, 1000.0 + 2 * i)
        assert out.desired == 4 and out.why == ""
        state = out.state


def test_a_spike_scales_up_in_one_step_then_waits_for_the_up_cooldown() -> None:
    cfg = _cfg(extra=", scale_up_cooldown: 15s")
    out = decide(cfg, 2, _m(200.0), State(), 100.0)
    assert out.desired == 8 and "requests_per_replica 200/s against target 50/s" in out.why
    assert out.state.last_up == out.state.last_change == 100.0
    held = decide(cfg, 8, _m(80.0), out.state, 110.0)  # still too much, 10 s later
    assert held.desired == 8 and held.recommended == 10 and "scale-up cooldown: 5s left" in held.holding
    again = decide(cfg, 8, _m(80.0), held.state, 115.0)
    assert again.desired == 10


def test_scale_down_only_after_the_down_cooldown_of_lower_demand_to_its_highest_ask() -> None:
    cfg = _cfg(extra=", scale_down_cooldown: 30s")
    state = State(last_up=0.0, last_change=0.0)
    asked = []
    for t, value in [(100, 10.0), (110, 20.0), (120, 5.0)]:  # recommendations 2, 4, 1 for 10 replicas
        out = decide(cfg, 10, _m(value), state, float(t))
        assert out.desired == 10 and "more of lower demand" in out.holding
        asked.append(out.recommended)
        state = out.state
    assert asked == [2, 4, 1]
    out = decide(cfg, 10, _m(5.0), state, 130.0)  # 30 s of lower demand
    assert out.desired == 4 and out.why  # the highest ask of the quiet time, not the last dip
    assert out.state.last_change == 130.0


def test_a_return_to_target_restarts_the_quiet_time() -> None:
    cfg = _cfg(extra=", scale_down_cooldown: 30s")
    out = decide(cfg, 10, _m(10.0), State(), 100.0)
    out = decide(cfg, 10, _m(50.0), out.state, 120.0)  # back on target: no longer low
    out = decide(cfg, 10, _m(10.0), out.state, 125.0)
    assert out.desired == 10 and out.state.low_since == 125.0
    assert decide(cfg, 10, _m(10.0), out.state, 150.0).desired == 10
    assert decide(cfg, 10, _m(10.0), out.state, 155.0).desired == 2


def test_no_scale_down_soon_after_a_scale_up() -> None:
    cfg = _cfg(extra=", scale_down_cooldown: 60s")
    # low for long, but just scaled
    state = State(last_up=100.0, last_change=100.0, low_since=90.0, low_max=3)
    out = decide(cfg, 6, _m(10.0), state, 130.0)
    assert out.desired == 6 and "30s more" in out.holding
    assert decide(cfg, 6, _m(10.0), out.state, 160.0).desired == 3


@pytest.mark.parametrize(
    ("replicas", "expected", "word"),
    [(0, 1, "below min (1)"), (15, 10, "above max (10)")],
)
def test_a_count_outside_min_max_is_brought_back_at_once(replicas: int, expected: int, word: str) -> None:
    state = State(last_up=99.0, last_change=99.0)  # cooldowns do not hold it
    for m in (_m(None), _m(50.0)):
        out = decide(_cfg(), replicas, m, state, 100.0)
        assert out.desired == expected and word in out.why


def test_missing_figures_hold_the_count_and_say_why() -> None:
    out = decide(_cfg(), 3, _m(None), State(low_since=50.0, low_max=1), 100.0)
    assert out.desired == 3 and out.why == ""
    assert out.holding == "no figures: no node reported its load lately"
    assert out.state.low_since == 0.0  # a gap in the figures restarts the quiet time


def test_never_outside_min_max_whatever_the_figure() -> None:
    cfg = _cfg()
    for replicas in range(1, 11):
        for value in (0.0, 1e-9, 1.0, 49.0, 500.0, 1e9):
            assert 1 <= decide(cfg, replicas, _m(value), State(), 1e6).desired <= 10


def _record(node: str, at: float, **services: ServiceLoad) -> LoadRecord:
    return LoadRecord(node, at, 6.0, (0.1, 0.2, 0.5), dict(services))


def test_measure_sums_every_fresh_node_and_skips_stale_ones() -> None:
    spec = parse_spec(BASE + "autoscale: {max: 10, target: {requests_per_replica: 50}}\n", "w.yaml")
    records = [
        _record("n1", 100.0, web=ServiceLoad(routed=True, requests=60.0)),
        _record("n2", 99.0, web=ServiceLoad(routed=True, requests=40.0), other=ServiceLoad(routed=True)),
        _record("n3", 80.0, web=ServiceLoad(routed=True, requests=1000.0)),  # 20 s old: stale
    ]
    assert measure(spec, 2, records, 100.0) == Measure("requests_per_replica", 50.0)
    assert measure(spec, 2, [], 100.0).value is None
    unrouted = [_record("n1", 100.0, web=ServiceLoad(tasks=1))]
    assert "publishes no port" in measure(spec, 2, unrouted, 100.0).missing


def test_a_record_dated_ahead_of_the_clock_by_more_than_the_skew_is_not_fresh() -> None:
    spec = parse_spec(BASE + "autoscale: {max: 10, target: {requests_per_replica: 50}}\n", "w.yaml")
    records = [
        _record("n1", 100.0, web=ServiceLoad(routed=True, requests=60.0)),
        _record("n2", 104.0, web=ServiceLoad(routed=True, requests=40.0)),  # 4 s ahead: skew, read
        _record("n3", 106.0, web=ServiceLoad(routed=True, requests=1000.0)),  # 6 s ahead: not read
        _record("n4", 1e12, web=ServiceLoad(routed=True, requests=1000.0)),  # forged: not read
    ]
    assert measure(spec, 2, records, 100.0) == Measure("requests_per_replica", 50.0)
    assert measure(spec, 2, records[2:], 100.0).missing == "no node reported its load lately"


def test_measure_cpu_memory_and_latency() -> None:
    def spec(target: str, resources: str = "") -> object:
        return parse_spec(BASE + resources + f"autoscale: {{max: 10, target: {target}}}\n", "w.yaml")

    loads = [
        _record("n1", 100.0, web=ServiceLoad(True, 10.0, (8, 1, 1, 0), 2, 90.0, 100, 400)),
        _record("n2", 100.0, web=ServiceLoad(True, 10.0, (8, 1, 1, 0), 1, 30.0, 200, 200)),
    ]
    cpu = measure(spec("{cpu: 60%}", "resources: {cpu: 0.5}\n"), 3, loads, 100.0)  # type: ignore[arg-type]
    assert cpu.value == pytest.approx(80.0)  # 40% of a core each = 80% of half a core
    mem = measure(spec("{memory: 70%}"), 3, loads, 100.0)  # type: ignore[arg-type]
    assert mem.value == pytest.approx(50.0)
    p95 = measure(spec("{p95_latency: 200ms}"), 3, loads, 100.0)  # type: ignore[arg-type]
    assert p95.value == pytest.approx(0.35)  # 19th of 20 in the (0.2, 0.5] bucket, interpolated
    idle = [_record("n1", 100.0, web=ServiceLoad(routed=True, latency=(0, 0, 0, 0)))]
    assert "no request" in measure(spec("{p95_latency: 200ms}"), 3, idle, 100.0).missing  # type: ignore[arg-type]


def test_percentile_edges() -> None:
    assert percentile((0.1, 0.2), (0, 0, 0), 0.95) is None
    assert percentile((0.1, 0.2), (0, 0, 5), 0.95) == 0.2  # all beyond the last bound
    assert percentile((0.1, 0.2), (10, 0, 0), 0.5) == pytest.approx(0.05)
    assert percentile((), (5,), 0.95) is None  # no bounds: nothing known (was an IndexError)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"node": "n1", "at": 1, "window": 6, "bounds": [], "services": {}}',
        b'{"node": "n1", "at": 1, "window": 6, "bounds": [0.2, 0.1], "services": {}}',
        b'{"node": "n1", "at": NaN, "window": 6, "bounds": [0.1], "services": {}}',
        b'{"node": "n1", "at": 1, "window": 6, "bounds": [0.1], "services": {"w": {"cpu": -5}}}',
        b'{"node": "n1", "at": 1, "window": 6, "bounds": [0.1], "services": {"w": {"latency": [1, 2, 3]}}}',
        b'{"node": "n1", "at": 1, "window": 6, "bounds": [0.1], "services": {"w": {"memory": 1.5}}}',
        b'{"node": "n1", "at": 1, "window": 6, "bounds": [0.1], "services": {"w": {"routed": "yes"}}}',
        b'{"node": "n1", "at": 1, "window": 6, "bounds": [0.1], "services": {"w": {"extra": 1}}}',
        b'{"at": 1, "window": 6, "bounds": [0.1]}',
    ],
)
def test_a_load_record_with_a_figure_not_to_decide_from_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        LoadRecord.from_json(raw)


def test_a_nan_figure_holds_the_count() -> None:
    out = decide(_cfg(), 2, Measure("requests_per_replica", math.nan), State(), 100.0)
    assert out.desired == 2 and out.holding.startswith("no figures")


def test_rate_window_rates_and_a_counter_that_goes_back() -> None:
    w = RateWindow(window=6.0)
    assert w.add(0.0, {"web": (0, (0, 0))})[1]["web"] == (0.0, (0, 0))
    span, out = w.add(2.0, {"web": (100, (90, 10))})
    assert span == 2.0 and out["web"] == (50.0, (90, 10))
    for t in (4.0, 6.0, 8.0):
        span, out = w.add(t, {"web": (int(50 * t), (int(45 * t), int(5 * t)))})
    assert span == 6.0 and out["web"][0] == pytest.approx(50.0)  # the window slid: 2..8
    span, out = w.add(10.0, {"web": (5, (5, 0))})  # the route was re-created: counters restarted
    assert out["web"] == (0.0, (0, 0))
    _, out = w.add(12.0, {"web": (25, (20, 5))})
    assert out["web"] == (10.0, (15, 5))


def test_records_round_trip() -> None:
    r = _record("n1", 1.5, web=ServiceLoad(True, 2.5, (1, 2, 3, 4), 1, 3.0, 4, 5))
    assert LoadRecord.from_json(r.to_json()) == r
    s = AutoscaleStatus(
        "web", "u1", "cpu", 60.0, None, "why", 2, 2, 1, 5, "", 0.0, 0.0, 0.0, 0.0, 9.0, "n1",
        Decision(8.0, 1, 2, "cpu", 90.0, "cpu 90% against target 60%"),
    )  # fmt: skip
    assert AutoscaleStatus.from_json(s.to_json()) == s


@pytest.mark.parametrize(
    ("section", "error"),
    [
        (
            "{min: 0, max: 5, target: {cpu: 60%}}",
            "autoscale.min: 0 (scale to zero) needs target requests_per",
        ),
        (
            "{min: -1, max: 5, target: {requests_per_replica: 5}}",
            "autoscale.min: must be between 0 and 10000",
        ),
        (
            "{max: 5, target: {cpu: 60%}, cold_start_timeout: 10ms}",
            "cold_start_timeout: must be at least 100ms",
        ),
        ("{min: 6, max: 5, target: {cpu: 60%}}", "autoscale.max: must be at least min (6), got 5"),
        ("{max: 5, target: {cpu: 160%}}", "autoscale.target.cpu: must be a percentage above 0%"),
        ("{max: 5, target: {cpu: lots}}", "autoscale.target.cpu: must be a percentage such as 60%"),
        ("{max: 5, target: {cpu: 60%, memory: 50}}", "set exactly one of"),
        ("{max: 5, target: {}}", "got none"),
        ("{max: 5, target: {p95_latency: 2h}}", "autoscale.target.p95_latency: must be at most"),
        ("{max: 5, target: {requests_per_replica: 0}}", "autoscale.target.requests_per_replica"),
        ("{max: 20000, target: {cpu: 60%}}", "autoscale.max: must be between 1 and 10000"),
        ("{max: 5, target: {cpu: 60%}, scale_up_cooldown: soon}", "autoscale.scale_up_cooldown: must be a"),
        ("{max: 5, target: {cpu: 60%}, cooldown: 5s}", "unknown field 'cooldown'"),
    ],
)
def test_bad_autoscale_sections_are_refused_by_name(section: str, error: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(BASE + f"autoscale: {section}\n", "w.yaml")
    assert error in str(err.value)


def test_a_global_service_or_a_job_cannot_autoscale() -> None:
    with pytest.raises(SpecError, match="global service"):
        parse_spec(BASE + "mode: global\nautoscale: {max: 5, target: {cpu: 60%}}\n", "w.yaml")
    with pytest.raises(SpecError, match="a job runs to completion"):
        parse_spec("name: j\nimage: x\nkind: job\nautoscale: {max: 5, target: {cpu: 60%}}\n", "j.yaml")


def test_good_sections_parse_with_their_units() -> None:
    spec = parse_spec(
        BASE + "autoscale: {min: 2, max: 20, target: {p95_latency: 200ms}, scale_up_cooldown: 5s,"
        " scale_down_cooldown: 2m}\n",
        "w.yaml",
    )
    a = spec.autoscale
    assert a is not None and (a.min, a.max, a.target.metric, a.target.value) == (2, 20, "p95_latency", 0.2)
    assert (a.scale_up_cooldown, a.scale_down_cooldown) == (5.0, 120.0)
    assert _cfg("{memory: 70}").target.value == 70.0


def test_an_apply_keeps_the_autoscaled_count_within_the_new_bounds() -> None:
    current = parse_spec(BASE + "replicas: 7\nautoscale: {max: 10, target: {cpu: 60%}}\n", "w.yaml")
    asked = parse_spec(BASE + "replicas: 2\nautoscale: {max: 5, target: {cpu: 60%}}\n", "w.yaml")
    assert keep_count(asked, current).replicas == 5  # kept, within the new max
    plain = parse_spec(BASE + "replicas: 7\n", "w.yaml")
    assert keep_count(asked, plain).replicas == 2  # newly autoscaled: its own count
    low = parse_spec(BASE + "autoscale: {min: 3, max: 5, target: {cpu: 60%}}\n", "w.yaml")
    assert keep_count(low, None).replicas == 3  # replicas (1) brought within min
    assert keep_count(plain, current) is plain  # not autoscaled: as asked


def test_scale_to_zero_after_the_idle_time_and_back_from_zero_at_once() -> None:
    spec = parse_spec(
        BASE + "autoscale: {min: 0, max: 5, target: {requests_per_replica: 10}, scale_up_cooldown: 1m,"
        " scale_down_cooldown: 30s, cold_start_timeout: 5s}\n",
        "w.yaml",
    )
    cfg = spec.autoscale
    assert cfg is not None and cfg.cold_start_timeout == 5.0
    out = decide(cfg, 1, _m(0.0), State(last_up=990.0, last_change=990.0), 1000.0)
    assert out.desired == 1 and out.recommended == 0 and "more of lower demand" in out.holding
    out = decide(cfg, 1, _m(0.0), out.state, 1030.0)  # idle for the scale-down cooldown
    assert out.desired == 0
    steady = decide(cfg, 0, _m(0.0), out.state, 1032.0)
    assert steady.desired == 0 and steady.holding == ""
    # a held request: the rate the node saw over its window (1 request in 6 s), no up cooldown
    woken = decide(cfg, 0, _m(1 / 6), State(last_up=1031.0, last_change=1031.0), 1032.0)
    assert woken.desired == 1 and "requests_per_replica" in woken.why
    assert decide(cfg, 0, _m(35.0), State(), 1032.0).desired == 4  # the whole rate, per target
