"""The etcd channel's options: each set once, with a ping that finds a hung member."""

from __future__ import annotations

from node.store.etcd import KEEPALIVE_MS, KEEPALIVE_TIMEOUT_MS, EtcdStore


def test_each_channel_option_is_set_once_and_a_hung_member_is_found_by_a_ping() -> None:
    store = EtcdStore(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"])
    options = store._client._manager.grpc_options
    names = [name for name, _ in options]
    assert len(names) == len(set(names)), f"an option set twice: {names}"
    got = dict(options)
    assert got["grpc.lb_policy_name"] == "round_robin"
    assert got["grpc.keepalive_time_ms"] == KEEPALIVE_MS >= 5000  # etcd's --grpc-keepalive-min-time
    assert got["grpc.http2.ping_timeout_ms"] == got["grpc.keepalive_timeout_ms"] == KEEPALIVE_TIMEOUT_MS
    assert got["grpc.http2.max_pings_without_data"] == 0
