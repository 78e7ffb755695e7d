"""The autoscaler, run by the leader while it leads (issue 15, decision 58).

Every `PERIOD` seconds: read the services, the nodes' load records (`load/`) and the
statuses (`autoscale/`); for every service with `autoscale:`, measure and decide
(`leader.autoscale`, pure); a change of the count goes through `ServiceWriter.scale`,
the very write `shoal service scale` makes (a new version with only the count changed,
compare-and-swap on the service key), so the rolling behaviour is the scale's; then
the event `service.autoscaled` names the metric and its value, and the status
`autoscale/<service>` says what `shoal service autoscale` shows. A status whose service
is gone or no longer autoscaled is deleted. A load record dated more than `SKEW` s
ahead of the leader's clock is not read, and logged once per node.

A new leader takes each service's last scale times from its status, so cooldowns
survive a failover; the quiet time before a scale-down starts again (conservative).
A change writes the status (with the new cooldowns) before the scale: the process dying
between the two leaves a status whose cooldown holds the next decision back (at most one
cooldown late), never a scale whose cooldown was lost (scaling twice in a row). etcd not
answering: the pass is skipped and tried again a period later.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable

from leader.autoscale import Measure, Outcome, State, decide, measure
from node.api.services import ServiceWriter
from node.model.domain import ServiceRecord, readable_services
from node.model.errors import ShoalError
from node.model.keys import Keys
from node.model.load import PERIOD, SKEW, AutoscaleStatus, Decision, LoadRecord
from node.store import Store, StoreError
from node.store.mirrors import mirror

log = logging.getLogger(__name__)

FAST = 0.05  # s at least between passes while a service is at zero (woken by the load records)
REFRESH = 10.0  # s: an unchanged status is written again this often (its `at` shows it is current)
Emit = Callable[..., None]  # EventLog.emit(kind, message, service, task, cause)


class Autoscaler:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        node: str,
        writer: ServiceWriter,
        emit: Emit,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.keys, self.node, self.writer, self.emit = store, keys, node, writer, emit
        self.clock = clock
        self.states: dict[tuple[str, str], State] = {}  # (service, uid) -> what decide remembers
        self.at_zero = False  # some autoscaled service has no replica: pass every FAST seconds
        self.ahead: set[str] = set()  # nodes whose load record is dated ahead (logged once)

    async def run(self) -> None:
        """While leading (a leadership companion: cancelled when it ends); never raises.

        Every `PERIOD`; while a service is at zero, also at once when a node's load record
        changes (a held request has its node publish at once: `node.daemon.loadreport`)."""
        self.states = {}  # a new term: the cooldowns come from the statuses
        loads = mirror(self.store, self.keys.loads, "autoscale-loads")  # the daemon's watch hub feeds it
        changed = loads.listener()
        follow = asyncio.create_task(loads.run(), name="autoscale-loads")
        try:
            while True:
                changed.clear()
                try:
                    await self.pass_once()
                except (StoreError, TimeoutError) as exc:
                    log.info("autoscaler: pass skipped, etcd did not answer: %s", exc)
                except Exception:
                    log.exception("autoscaler: pass failed")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(PERIOD):
                        await (changed.wait() if self.at_zero else asyncio.Event().wait())
                if self.at_zero:
                    await asyncio.sleep(FAST)  # a burst of records makes one pass, not one each
        finally:
            follow.cancel()

    async def pass_once(self) -> None:
        now = self.clock()
        kvs, _ = await self.store.range(self.keys.services)
        services = readable_services(kv.value for kv in kvs)  # a newer build's record: left alone
        scaled = [s for s in services if s.spec.autoscale is not None]
        statuses: dict[str, AutoscaleStatus] = {}
        kvs, _ = await self.store.range(self.keys.autoscales)
        for kv in kvs:
            name = self.keys.tail(kv.key, self.keys.autoscales)
            try:
                statuses[name] = AutoscaleStatus.from_json(kv.value)
            except (ValueError, TypeError, KeyError):
                log.warning("autoscaler: unreadable status of %s, written anew", name)
        loads: list[LoadRecord] = []
        if scaled:
            kvs, _ = await self.store.range(self.keys.loads)
            for kv in kvs:
                try:
                    loads.append(LoadRecord.from_json(kv.value))
                except (ValueError, TypeError, KeyError):
                    log.warning("autoscaler: unreadable load record %s skipped", kv.key)
            self._note_ahead(loads, now)
        counts = [await self._one_guarded(record, loads, statuses.get(record.name), now) for record in scaled]
        self.at_zero = 0 in counts  # with the counts just set: the first request may come now
        wanted = {s.name for s in scaled}
        for name in [n for n in statuses if n not in wanted]:
            await self.store.delete(self.keys.autoscale(name))
        self.states = {k: v for k, v in self.states.items() if k[0] in wanted}

    def _note_ahead(self, loads: list[LoadRecord], now: float) -> None:
        """Log, once per node until it is back in time, a record dated ahead of this clock by
        more than `SKEW`: `measure` does not read it (a skewed clock, or a forged date)."""
        ahead = {r.node: r.at - now for r in loads if r.at - now > SKEW}
        for node in sorted(ahead.keys() - self.ahead):
            log.warning(
                "autoscaler: the load record of %s is dated %.1fs ahead of this leader's clock "
                "(more than %gs): not read until it is not (check the node's clock)",
                node,
                ahead[node],
                SKEW,
            )
        self.ahead = set(ahead)

    async def _one_guarded(
        self, record: ServiceRecord, loads: list[LoadRecord], status: AutoscaleStatus | None, now: float
    ) -> int:
        """`one`, with a failure of its own (not etcd's) kept to that service: the others
        are decided, and the statuses of removed services deleted, all the same."""
        try:
            return await self.one(record, loads, status, now)
        except (ArithmeticError, ValueError) as exc:
            log.warning("autoscaler: %s not decided: %s", record.name, exc)
            return record.replicas

    async def one(
        self, record: ServiceRecord, loads: list[LoadRecord], status: AutoscaleStatus | None, now: float
    ) -> int:
        """Decide for one service; its replica count after the decision."""
        cfg = record.spec.autoscale
        assert cfg is not None
        mine = status if status is not None and status.uid == record.uid else None
        key = (record.name, record.uid)
        state = self.states.get(key) or (State(mine.last_up, mine.last_change) if mine else State())
        m = measure(record.spec, record.replicas, loads, now)
        out = decide(cfg, record.replicas, m, state, now)
        last = mine.last if mine else None
        if out.desired != record.replicas:
            last = Decision(now, record.replicas, out.desired, m.metric, _round(m.value), out.why)
            # the status (its cooldowns) first: dying between the two writes delays the
            # next scale by a cooldown at most; the other order could scale twice in one
            intent = self.status(record, m, out, out.desired, last, now)
            await self.store.put(self.keys.autoscale(record.name), intent.to_json())
            try:
                new = await self.writer.scale(record.name, out.desired, of=record)
            except ShoalError as exc:  # removed meanwhile, busy: the next pass sees it
                log.info("autoscaler: %s not scaled: %s", record.name, exc)
                return record.replicas
            mine = intent
            self.emit(
                "service.autoscaled",
                f"{record.name} version {new.version}: {record.replicas} -> {out.desired} replica(s): "
                f"{out.why}",
                record.name,
                cause=new.cause,
            )
        self.states[key] = out.state
        fresh = self.status(record, m, out, out.desired, last, now)
        if mine is None or now - mine.at >= REFRESH or dataclasses.replace(mine, at=now) != fresh:
            await self.store.put(self.keys.autoscale(record.name), fresh.to_json())
        return out.desired

    def status(
        self,
        record: ServiceRecord,
        m: Measure,
        out: Outcome,
        replicas: int,
        last: Decision | None,
        now: float,
    ) -> AutoscaleStatus:
        cfg = record.spec.autoscale
        assert cfg is not None
        s = out.state
        quiet = max(s.low_since, s.last_change) + cfg.scale_down_cooldown if s.low_since else 0.0
        return AutoscaleStatus(
            service=record.name,
            uid=record.uid,
            metric=m.metric,
            target=cfg.target.value,
            value=None if m.value is None else _round(m.value),
            missing=m.missing,
            replicas=replicas,
            desired=out.recommended,
            min=cfg.min,
            max=cfg.max,
            holding=out.holding,
            last_up=s.last_up,
            last_change=s.last_change,
            up_cooldown_until=s.last_up + cfg.scale_up_cooldown if s.last_up else 0.0,
            down_cooldown_until=quiet,
            at=now,
            leader=self.node,
            last=last,
        )


def _round(value: float | None) -> float:
    """Three significant figures: a status is rewritten when what it shows changes, not its noise."""
    return float(f"{value:.3g}") if value is not None else 0.0
