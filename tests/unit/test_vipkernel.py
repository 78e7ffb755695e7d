"""Keeping the VIP table in the kernel (node.proxy.vipkernel, decision 74), with a fake
`nft`: writes only on change, retries a refusal, then turns the path off and deletes the
table; off for good without the binary or br_netfilter; `nft` really run when present."""

from __future__ import annotations

import shutil
import subprocess
import types
from pathlib import Path

import pytest

from node.daemon.app import Daemon
from node.proxy import vipkernel
from node.proxy.nft import NftError
from node.proxy.vipkernel import ATTEMPTS, RETRY_AFTER, VipKernel
from node.proxy.vipnat import Rule, removal, script, table_name
from node.telemetry.events import EventLog

RULE = Rule("web", "10.213.0.16", 8080, ("172.17.0.4",), frozenset({"172.17.0.9"}))


class FakeNft:
    def __init__(self) -> None:
        self.texts: list[str] = []
        self.refuse = 0  # runs to refuse from now on

    async def __call__(self, nft: str, text: str) -> None:
        self.texts.append(text)
        if self.refuse:
            self.refuse -= 1
            raise NftError("nft -f failed (1): Error: Could not process rule: No such file or directory")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def bridge(tmp_path: Path) -> Path:
    path = tmp_path / "bridge-nf-call-iptables"
    path.write_text("1\n")
    return path


def kernel(
    bridge: Path, fake: FakeNft, events: EventLog | None = None, clock: Clock | None = None
) -> VipKernel:
    return VipKernel(
        "shoal_vip_t_n1", nft="sh", events=events, bridge_nf=bridge, runner=fake, clock=clock or Clock()
    )


class Events:
    def __init__(self) -> None:
        self.kinds: list[str] = []

    def emit(self, kind: str, message: str, service: str = "", task: str = "", cause: str = "") -> None:
        self.kinds.append(kind)


async def test_the_first_apply_replaces_a_left_table_and_a_change_is_written_once(bridge: Path) -> None:
    """A killed daemon's table is not wiped at start (its rules serve the host's replicas
    until the listeners are bound): the first apply replaces it whole."""
    fake = FakeNft()
    k = kernel(bridge, fake)
    assert await k.apply([RULE]) and await k.apply([RULE])
    assert len(fake.texts) == 1 and "delete table ip shoal_vip_t_n1" in fake.texts[0]
    assert "172.17.0.4 . 8080" in fake.texts[0]
    assert k.up and k.rules == (RULE,) and k.applies == 1
    await k.close()
    assert fake.texts[-1] == "table ip shoal_vip_t_n1 {}\ndelete table ip shoal_vip_t_n1\n"


async def test_a_refusal_is_retried_then_the_path_is_off_and_the_table_deleted(bridge: Path) -> None:
    fake, events, clock = FakeNft(), Events(), Clock()
    k = kernel(bridge, fake, events, clock)  # type: ignore[arg-type]
    fake.refuse = 1  # one refusal: the retry succeeds
    assert await k.apply([RULE]) and k.up
    fake.refuse = ATTEMPTS
    other = Rule("web", "10.213.0.16", 8080, ("172.17.0.5",), frozenset({"172.17.0.9"}))
    assert not await k.apply([other])
    assert not k.up and "No such file" in k.reason and k.failures == 1 and k.rules == ()
    assert fake.texts[-1].startswith("table ip shoal_vip_t_n1 {}\ndelete table")  # no stale rule left
    assert events.kinds == ["names.kernel_off"]
    runs = len(fake.texts)
    assert not await k.apply([other]) and len(fake.texts) == runs  # not again before RETRY_AFTER
    clock.now += RETRY_AFTER
    assert await k.apply([other]) and k.up and events.kinds == ["names.kernel_off", "names.kernel_on"]


@pytest.mark.parametrize(
    ("nft", "enabled", "bridge_text", "reason"),
    [
        ("sh", False, "1", "vip_kernel = false"),
        ("no-such-nft-binary", True, "1", "no 'no-such-nft-binary' binary on PATH (install nftables)"),
        ("sh", True, "0", "is not 1: load br_netfilter"),
        ("sh", True, None, "is not 1: load br_netfilter"),  # br_netfilter not loaded at all
    ],
)
async def test_off_for_good_says_what_to_fix_and_never_runs_nft(
    tmp_path: Path, nft: str, enabled: bool, bridge_text: str | None, reason: str
) -> None:
    bridge = tmp_path / "bridge-nf-call-iptables"
    if bridge_text is not None:
        bridge.write_text(bridge_text)
    fake, events = FakeNft(), Events()
    k = VipKernel("shoal_vip_t_n1", nft=nft, events=events, enabled=enabled, bridge_nf=bridge, runner=fake)  # type: ignore[arg-type]
    assert not await k.apply([RULE])
    await k.close()
    assert fake.texts == [] and not k.up and reason in k.reason and not k.usable()
    assert events.kinds == ([] if not enabled else ["names.kernel_off"])


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft is checked by the integration tests in CI")
def test_the_real_nft_accepts_the_text_checked_only(tmp_path: Path) -> None:
    """`nft -c` parses and checks the script against the kernel without applying it."""
    nft = shutil.which("nft")
    assert nft is not None
    path = tmp_path / "t.nft"
    path.write_text(script("shoal_vip_unit_check", [RULE]))
    done = subprocess.run([nft, "-c", "-f", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("enabled, bridge_text", [(False, "1\n"), (True, None)])
async def test_a_left_table_is_removed_at_start_only_when_the_path_is_off_for_good(
    tmp_path: Path, enabled: bool, bridge_text: str | None
) -> None:
    """Before, a table a kill -9 left survived a restart with `vip_kernel = false` or
    without br_netfilter (nothing ran nft), DNATing containers to old replica addresses.
    With the path on, start leaves it for the first apply (decision 74: not wiped)."""
    bridge = tmp_path / "bridge-nf-call-iptables"
    if bridge_text is not None:
        bridge.write_text(bridge_text)
    fake = FakeNft()
    off = VipKernel("shoal_vip_t_n1", nft="sh", enabled=enabled, bridge_nf=bridge, runner=fake)
    await off.start()
    assert fake.texts == [removal("shoal_vip_t_n1")]
    bridge.write_text("1\n")
    on, quiet = kernel(bridge, FakeNft()), FakeNft()
    on.runner = quiet
    await on.start()
    assert quiet.texts == []


async def test_names_off_removes_a_left_vip_table_at_the_daemons_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, with names off no VipKernel was built and a left table stayed for good."""
    nft = tmp_path / "nft"
    nft.write_text("#!/bin/sh\nexit 0\n")
    nft.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    fake = FakeNft()
    monkeypatch.setattr(vipkernel, "run_nft", fake)
    config = types.SimpleNamespace(names=False, cluster="t", node_id="n1")
    assert await Daemon._names(types.SimpleNamespace(config=config), None) is None  # type: ignore[arg-type]
    assert fake.texts == [removal(table_name("t", "n1"))]
