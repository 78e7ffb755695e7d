"""`Shoal/UsageReport` and `Shoal/SetUsageRates` (issue 15, item 4; decision 67).

The report reads the raw interval records and the day totals from etcd (both bounded:
`leader.usage_rollup`) in one range, so at one revision (a roll-up that moves records
between the two meanwhile is seen before or after, never half), keeps those that start
in [since, until) — raw intervals to the interval, day totals to the whole UTC day — and
groups and prices them (`node.model.usage_ledger.report`) with the rate card `usage/rates`
(one that does not read is refused with FAILED_PRECONDITION saying how to set it again).
"""

from __future__ import annotations

import math
import time

import grpc
import grpc.aio

from node.api.server import handle
from node.model.errors import FailedPrecondition, InvalidArgument
from node.model.keys import Keys
from node.model.usage_ledger import Rates, Record, Row, UsageKeys, check_by, report, totals
from node.pb import api_pb2
from node.store import Store


def row_pb(row: Row) -> api_pb2.UsageRow:
    return api_pb2.UsageRow(key=row.key, cost=row.cost, node_cost=row.node_cost, **row.hours())


def rates_pb(rates: Rates, is_set: bool) -> api_pb2.UsageRates:
    return api_pb2.UsageRates(
        vcpu_hour=rates.vcpu_hour,
        gib_hour=rates.gib_hour,
        node_hour=rates.node_hour,
        currency=rates.currency,
        set=is_set,
    )


async def read_rates(store: Store, keys: UsageKeys) -> tuple[Rates, bool]:
    """The stored rate card, and whether one is set. One that does not read (a hand edit:
    `SetUsageRates` stores only checked cards) is refused, naming the key and the fix:
    priced at 0 instead, a report would look right and bill nothing."""
    kv = await store.get(keys.rates)
    if kv is None:
        return Rates(), False
    try:
        return Rates.from_json(kv.value), True
    except (InvalidArgument, ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise FailedPrecondition(
            f"the stored rate card ({keys.rates}) cannot be read ({str(exc)[:200]}); set it again with "
            "`shoal usage rates set`"
        ) from None


async def usage_report(
    store: Store, keys: Keys, request: api_pb2.UsageReportRequest
) -> api_pb2.UsageReportResponse:
    by = check_by(request.by or "service")
    since, until = request.since, request.until or time.time()
    if not (math.isfinite(since) and math.isfinite(until)) or since < 0 or until <= since:
        raise InvalidArgument(f"--until ({until:.0f}) must be after --since ({since:.0f})")
    ukeys = UsageKeys(keys.prefix)
    # ONE range over usage/ (one revision): a roll-up moves raw records into a day total in
    # one transaction, and reading raw and days apart could see it in between (twice or none)
    every, _ = await store.range(ukeys.usage)
    raws = [kv for kv in every if kv.key.startswith(ukeys.raw)]
    days = [kv for kv in every if kv.key.startswith(ukeys.days)]
    records = [r for r in (_record(kv.value) for kv in (*days, *raws)) if r is not None]
    rates, is_set = await read_rates(store, ukeys)
    rows = report(records, since, until, by, rates)
    return api_pb2.UsageReportResponse(
        rows=[row_pb(r) for r in rows],
        total=row_pb(totals(rows, rates)),
        rates=rates_pb(rates, is_set),
        since=since,
        until=until,
        by=by,
        interval_records=len(raws),
        day_records=len(days),
    )


def _record(raw: bytes) -> Record | None:
    """A stored record; None for one this version cannot read (left out, not an error)."""
    try:
        return Record.from_json(raw)
    except (ValueError, KeyError, TypeError):
        return None


class UsageReportHandlers:
    """Mixed into `ShoalServicer` (which has `store` and `keys`)."""

    store: Store
    keys: Keys

    @handle
    async def UsageReport(
        self, request: api_pb2.UsageReportRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.UsageReportResponse:
        return await usage_report(self.store, self.keys, request)

    @handle
    async def SetUsageRates(
        self, request: api_pb2.SetUsageRatesRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.UsageRates:
        r = request.rates
        rates = Rates.of(
            {
                "vcpu_hour": r.vcpu_hour,
                "gib_hour": r.gib_hour,
                "node_hour": r.node_hour,
                "currency": r.currency or "USD",
            }
        )
        await self.store.put(UsageKeys(self.keys.prefix).rates, rates.to_json())
        return rates_pb(rates, True)
