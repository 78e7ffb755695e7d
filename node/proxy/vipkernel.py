"""Keeps this node's VIP table (`node.proxy.vipnat`) in the kernel (decision 74).

`VipKernel.apply(rules)` writes the whole table in one `nft -f -` transaction (the old
rules are replaced at once, never merged), only when its text changed; a refusal is
tried again (tenacity: `ATTEMPTS` runs, short waits), then the kernel path is turned
off: the table is deleted (so no stale rule sends a connection to a replica that left)
and every VIP port is the listener's again, which it always was underneath. One warning,
one `names.kernel_off` event, `shoal_vip_kernel_up 0`; the next change after
`RETRY_AFTER` tries again, and success says `names.kernel_on`.

Off from the start, for good (a warning and the event, naming what to fix): the setting
`vip_kernel = false`; no `nft` binary; bridged traffic not seen by netfilter
(`net.bridge.bridge-nf-call-iptables` not 1: a reply from a replica to a client on the
same bridge would skip conntrack's reverse translation and be dropped by the client).

Life: with the path on, the first `apply` replaces whatever table of this name a killed
daemon left (not wiped at start: until the listeners are bound, its rules are what
serves containers' connections); `close()` deletes it on a graceful stop. A daemon
killed with -9 leaves its table: containers keep reaching the replicas it named (the
data path outlives the daemon, as a running container does) until the daemon is back
and replaces it, or, for a replica that stopped meanwhile, get a refused connection.
With the path off for good (or names off: `remove_left`), `start()` deletes such a
table with any `nft` on PATH: nothing would ever replace it, and its rules would DNAT
containers to old replica addresses that Docker may have given to other containers.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from tenacity import AsyncRetrying, RetryError, stop_after_attempt, wait_random

from node.proxy.nft import NftError, run_nft
from node.proxy.vipnat import Rule, removal, script
from node.telemetry.events import EventLog

log = logging.getLogger(__name__)

ATTEMPTS = 3  # runs of `nft -f` per change before the kernel path is turned off
RETRY_AFTER = 30.0  # s after a failure before a change tries the kernel again
BRIDGE_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


class VipKernel:
    def __init__(
        self,
        table: str,
        nft: str = "nft",
        events: EventLog | None = None,
        enabled: bool = True,
        bridge_nf: Path = BRIDGE_NF,
        runner: Callable[[str, str], Awaitable[None]] = run_nft,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.program = nft  # any found on PATH removes a left table (`start`), even when off
        self.nft = shutil.which(nft) if enabled else None
        self.events = events
        self.runner = runner
        self.clock = clock
        self.reason = ""  # why the kernel path is off ("" while it is on)
        self.permanent = False  # off for good (setting, binary, bridge): never tried again
        self.written: str | None = None  # the text the kernel holds now (None: unknown or none)
        self.rules: tuple[Rule, ...] = ()
        self.failures = 0
        self.applies = 0
        self._failed_at = 0.0
        if not enabled:
            self._off("vip_kernel = false", permanent=True, quiet=True)
        elif self.nft is None:
            self._off(f"no {nft!r} binary on PATH (install nftables)", permanent=True)
        elif not _bridge_ok(bridge_nf):
            self._off(
                f"{bridge_nf} is not 1: load br_netfilter (modprobe br_netfilter) "
                "so that replies on a Docker bridge pass conntrack",
                permanent=True,
            )

    @property
    def up(self) -> bool:
        return not self.reason

    def usable(self) -> bool:
        """May rules be written now (on, or off after a failure long enough ago)?"""
        if self.permanent:
            return False
        return self.up or self.clock() - self._failed_at >= RETRY_AFTER

    async def apply(self, rules: Iterable[Rule]) -> bool:
        """Make the kernel hold exactly `rules`; False when it does not (the listeners then
        serve every VIP port)."""
        rules = tuple(rules)
        if not self.usable():
            return False
        assert self.nft is not None
        text = script(self.table, rules)
        if text == self.written and self.up:
            return True
        try:
            await self._run(text)
        except NftError as exc:
            self.failures += 1
            self._failed_at = self.clock()
            self.written = None
            self.rules = ()
            self._off(str(exc))
            try:
                await self._run(removal(self.table), attempts=1)
            except NftError as again:
                log.error("names: VIP table %s may hold stale rules: %s", self.table, again)
            return False
        self.written, self.rules = text, rules
        self.applies += 1
        if self.reason:
            self.reason = ""
            log.warning("names: kernel path for VIPs is on again (table %s)", self.table)
            if self.events is not None:
                self.events.emit("names.kernel_on", f"VIPs in the kernel again (nftables table {self.table})")
        return True

    async def start(self) -> None:
        """At the daemon's start: off for good, delete a table a former run left; on, leave
        it for the first `apply` to replace."""
        if self.permanent:
            await remove_left(self.table, self.program, self.runner)

    async def close(self) -> None:
        """Delete the table (graceful stop): the listeners are closing too."""
        if self.nft is None or self.permanent:
            return
        try:
            await self._run(removal(self.table), attempts=1)
        except NftError as exc:
            log.warning("names: VIP table %s not removed: %s", self.table, exc)
        self.written, self.rules = None, ()

    async def _run(self, text: str, attempts: int = ATTEMPTS) -> None:
        assert self.nft is not None
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(attempts), wait=wait_random(0.05, 0.3), reraise=False
            ):
                with attempt:
                    await self.runner(self.nft, text)
        except RetryError as exc:
            error = exc.last_attempt.exception()
            raise error if isinstance(error, NftError) else NftError(str(error)) from None

    def _off(self, reason: str, permanent: bool = False, quiet: bool = False) -> None:
        first = self.reason != reason
        self.reason, self.permanent = reason, permanent
        if not first:
            return
        message = f"VIPs served by the userland listeners, not the kernel: {reason}"
        (log.info if quiet else log.warning)("names: %s", message)
        if self.events is not None and not quiet:
            self.events.emit("names.kernel_off", message)

    def describe(self) -> dict[str, object]:
        return {
            "table": self.table,
            "up": self.up,
            "reason": self.reason,
            "rules": [f"{r.vip}:{r.port} {r.service} -> {len(r.targets)}" for r in self.rules],
            "applies": self.applies,
            "failures": self.failures,
        }


async def remove_left(
    table: str, nft: str = "nft", runner: Callable[[str, str], Awaitable[None]] | None = None
) -> None:
    """Delete this node's VIP table if a former run left it, when nothing here will write
    it (the VIP kernel path or names off); nothing without `nft` on PATH."""
    program = shutil.which(nft)
    if program is None:
        return
    try:
        await (runner or run_nft)(program, removal(table))
    except NftError as exc:
        log.warning("names: a VIP table %s left by a former run may remain: %s", table, exc)


def _bridge_ok(path: Path) -> bool:
    """Does netfilter see bridged IPv4 traffic? (The file is absent without br_netfilter.)"""
    try:
        return path.read_text().strip() == "1"
    except OSError:
        return False
