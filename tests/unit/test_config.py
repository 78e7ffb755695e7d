"""`node.model.config`: precedence, validation with the field named, the persisted node id, labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.model.config import PRESETS, ConfigError, NodeConfig, load, parse_labels, resolve_node_id


def toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "shoal.toml"
    path.write_text(text)
    return str(path)


# -- precedence --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("use_flag", "use_env", "use_file", "port"),
    [
        (True, True, True, 3000),
        (False, True, True, 2000),
        (False, False, True, 1000),
        (False, False, False, 7070),
        (True, False, True, 3000),
    ],
)
def test_flags_beat_env_beat_file_beat_defaults(
    tmp_path: Path, use_flag: bool, use_env: bool, use_file: bool, port: int
) -> None:
    flags = {"grpc_port": 3000} if use_flag else {}
    env = {"SHOAL_GRPC_PORT": "2000"} if use_env else {}
    path = toml(tmp_path, "grpc_port = 1000\n") if use_file else None
    assert load(flags, env, path).grpc_port == port


def test_flags_left_unset_do_not_override(tmp_path: Path) -> None:
    config = load(
        {"grpc_port": None, "cluster": None}, {"SHOAL_CLUSTER": "blue"}, toml(tmp_path, "grpc_port = 1000")
    )
    assert (config.grpc_port, config.cluster) == (1000, "blue")


def test_the_file_can_be_named_by_env(tmp_path: Path) -> None:
    config = load({}, {"SHOAL_CONFIG": toml(tmp_path, 'cluster = "green"')})
    assert config.cluster == "green"


def test_the_preset_fills_what_is_not_set(tmp_path: Path) -> None:
    local = load({"preset": "local"}, {})
    assert local.timings == PRESETS["local"]
    assert load({}, {}).timings == PRESETS["lan"]
    tuned = load({"preset": "local"}, {}, toml(tmp_path, "lease_ttl = 7"))
    assert tuned.timings.lease_ttl == 7
    assert tuned.timings.agent_resync == PRESETS["local"].agent_resync


def test_env_values_are_converted_to_the_field_types() -> None:
    env = {
        "SHOAL_ETCD": "10.0.0.5:2379, 10.0.0.6:2379",
        "SHOAL_ETCD_TIMEOUT": "2.5",
        "SHOAL_WAIT_FOR_ETCD": "yes",
        "SHOAL_DATA_DIR": "/tmp/shoal-x",
        "SHOAL_LABELS": "zone=eu,rack=r1",
    }
    config = load({}, env)
    assert config.etcd == ("10.0.0.5:2379", "10.0.0.6:2379")
    assert config.etcd_timeout == 2.5
    assert config.wait_for_etcd is True
    assert config.data_dir == Path("/tmp/shoal-x")
    assert config.labels == {"zone": "eu", "rack": "r1"}


def test_a_toml_file_may_hold_lists_and_tables(tmp_path: Path) -> None:
    text = 'etcd = ["a:1", "b:2"]\nwait_for_etcd = false\n[labels]\nzone = "eu"\n'
    config = load({}, {}, toml(tmp_path, text))
    assert (config.etcd, config.wait_for_etcd, dict(config.labels)) == (("a:1", "b:2"), False, {"zone": "eu"})


# -- refusals ----------------------------------------------------------------------------


def test_an_unknown_toml_key_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown setting.*grpc_prot"):
        load({}, {}, toml(tmp_path, "grpc_prot = 1"))


def test_a_broken_or_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file"):
        load({}, {}, toml(tmp_path, "grpc_port = = 1"))
    with pytest.raises(ConfigError, match="config file"):
        load({}, {}, str(tmp_path / "absent.toml"))


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"SHOAL_GRPC_PORT": "seventy"}, "grpc_port"),
        ({"SHOAL_GRPC_PORT": "70000"}, "grpc_port"),
        ({"SHOAL_GRPC_PORT": "0"}, "grpc_port"),
        ({"SHOAL_ETCD_TIMEOUT": "soon"}, "etcd_timeout"),
        ({"SHOAL_PRESET": "fast"}, "preset"),
        ({"SHOAL_NODE_ID": "Node_1"}, "node_id"),
        ({"SHOAL_NODE_ID": "-n1"}, "node_id"),
        ({"SHOAL_CLUSTER": ""}, "cluster"),
        ({"SHOAL_ETCD": "localhost"}, "etcd"),
        ({"SHOAL_ETCD": "host:port"}, "etcd"),
        ({"SHOAL_ETCD": " , "}, "etcd"),
        ({"SHOAL_LOG_FORMAT": "xml"}, "log_format"),
        ({"SHOAL_LEASE_TTL": "1"}, "lease_ttl"),
        ({"SHOAL_LEASE_TTL": "301"}, "lease_ttl"),
        ({"SHOAL_LABELS": "zone"}, "labels"),
        ({"SHOAL_LABELS": "bad key!=x"}, "labels"),
        ({"SHOAL_WAIT_FOR_ETCD": "maybe"}, "wait_for_etcd"),
        ({"SHOAL_SHUTDOWN_GRACE": "0"}, "shutdown_grace"),
        ({"SHOAL_SHUTDOWN_GRACE": "soon"}, "shutdown_grace"),
        ({"SHOAL_DOCKER_HOST": "/var/run/docker.sock"}, "docker_host"),
        ({"SHOAL_ENGINE_TIMEOUT": "0"}, "engine_timeout"),
        ({"SHOAL_PULL_TIMEOUT": "0.5"}, "pull_timeout"),
        ({"SHOAL_RESTART_GRACE": "-2"}, "restart_grace"),
        ({"SHOAL_RESTART_GRACE": "3601"}, "restart_grace"),
        ({"SHOAL_RESTART_GRACE": "soon"}, "restart_grace"),
    ],
)
def test_bad_values_are_refused_naming_the_field(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        load({}, env)


# -- the node id -------------------------------------------------------------------------


def test_a_made_up_node_id_is_kept_in_the_data_dir(tmp_path: Path) -> None:
    config = NodeConfig(data_dir=tmp_path / "data")
    first = resolve_node_id(config)
    assert first.node_id and (tmp_path / "data" / "node-id").read_text().strip() == first.node_id
    assert resolve_node_id(config).node_id == first.node_id


def test_a_given_node_id_is_persisted_and_a_different_one_refused(tmp_path: Path) -> None:
    assert resolve_node_id(NodeConfig(node_id="n1", data_dir=tmp_path)).node_id == "n1"
    assert resolve_node_id(NodeConfig(data_dir=tmp_path)).node_id == "n1"
    assert resolve_node_id(NodeConfig(node_id="n1", data_dir=tmp_path)).node_id == "n1"
    with pytest.raises(ConfigError, match=r"node_id: .* belongs to node 'n1', not 'n2'"):
        resolve_node_id(NodeConfig(node_id="n2", data_dir=tmp_path))
    assert (tmp_path / "node-id").read_text().strip() == "n1"


def test_an_empty_node_id_file_is_refused_not_replaced_by_a_new_id(tmp_path: Path) -> None:
    """A power loss under a plain write left it empty: a new random id made the host join as
    another node (its tasks moved, its drain and labels lost). Now it says what to do; and
    the id is written whole or not at all (no temporary left behind)."""
    (tmp_path / "node-id").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        resolve_node_id(NodeConfig(data_dir=tmp_path))
    (tmp_path / "node-id").unlink()
    assert resolve_node_id(NodeConfig(node_id="n7", data_dir=tmp_path)).node_id == "n7"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node-id"]


# -- labels ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "labels"),
    [
        ("zone=eu", {"zone": "eu"}),
        ("zone=eu, rack=r1 ,", {"zone": "eu", "rack": "r1"}),
        (["zone=eu", "disk=ssd"], {"zone": "eu", "disk": "ssd"}),
        ("gpu=", {"gpu": ""}),
        ("k=a=b", {"k": "a=b"}),
        ("io.shoal.x=1", {"io.shoal.x": "1"}),
        ("", {}),
    ],
)
def test_labels_parse(given: str | list[str], labels: dict[str, str]) -> None:
    assert parse_labels(given) == labels


@pytest.mark.parametrize("given", ["zone", "=eu", "-zone=eu", "zo ne=eu", ["ok=1", "bad"]])
def test_bad_labels_are_refused(given: str | list[str]) -> None:
    with pytest.raises(ConfigError, match=r"^labels: "):
        parse_labels(given)


def test_the_hardening_settings_have_documented_defaults_and_bounds(tmp_path: Path) -> None:
    """Issue 11 (12, 15): join_token_uses, max_streams_per_token, reserved_ports, metrics guard."""
    c = load({}, {})
    assert (c.join_token_uses, c.max_streams_per_token, c.reserved_ports) == (100, 32, ())
    assert (c.metrics_tls, c.metrics_token_file) == (False, "")
    env = {"SHOAL_RESERVED_PORTS": "9100, 22", "SHOAL_METRICS_TLS": "yes", "SHOAL_JOIN_TOKEN_USES": "5"}
    c = load({}, env)
    assert (c.reserved_ports, c.metrics_tls, c.join_token_uses) == ((9100, 22), True, 5)
    toml = tmp_path / "c.toml"
    toml.write_text("reserved_ports = [9100]\nmax_streams_per_token = 4\n")
    assert load({}, {}, str(toml)).reserved_ports == (9100,)
    for bad, field in (
        ({"SHOAL_RESERVED_PORTS": "0"}, "reserved_ports"),
        ({"SHOAL_RESERVED_PORTS": "x"}, "reserved_ports"),
        ({"SHOAL_JOIN_TOKEN_USES": "0"}, "join_token_uses"),
        ({"SHOAL_MAX_STREAMS_PER_TOKEN": "0"}, "max_streams_per_token"),
    ):
        with pytest.raises(ConfigError, match=field):
            load({}, bad)


def test_proxy_limits_have_their_defaults_and_reach_the_mesh(tmp_path: Path) -> None:
    from node.proxy.limits import HttpLimits
    from node.proxy.mesh import MeshSettings

    s = MeshSettings.from_config(load({}, {}))
    assert s.limits == HttpLimits(
        max_head=65536, max_url=8192, max_headers=100, head_timeout=10.0, body_timeout=60.0
    )
    assert (s.max_connections, s.tcp_idle_timeout) == (10_000, 3600.0)
    path = tmp_path / "shoald.toml"
    path.write_text("proxy_max_headers = 50\nproxy_tcp_idle_timeout = 600\n")
    env = {"SHOAL_PROXY_MAX_URL_BYTES": "4096", "SHOAL_PROXY_MAX_CONNECTIONS": "0"}
    s = MeshSettings.from_config(load({}, env, str(path)))
    assert (s.limits.max_headers, s.limits.max_url, s.max_connections, s.tcp_idle_timeout) == (
        50,
        4096,
        0,
        600.0,
    )


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"SHOAL_PROXY_MAX_HEAD_BYTES": "10"}, "proxy_max_head_bytes"),
        ({"SHOAL_PROXY_MAX_HEADERS": "0"}, "proxy_max_headers"),
        ({"SHOAL_PROXY_HEAD_TIMEOUT": "0"}, "proxy_head_timeout"),
        ({"SHOAL_PROXY_MAX_CONNECTIONS": "-1"}, "proxy_max_connections"),
        ({"SHOAL_PROXY_BODY_TIMEOUT": "soon"}, "proxy_body_timeout"),
    ],
)
def test_bad_proxy_limits_are_refused_naming_the_setting(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        load({}, env)


def test_restart_grace_defaults_to_the_lease_ttl_and_minus_one_turns_the_mark_off() -> None:
    from node.daemon.restarting import grace

    assert grace(NodeConfig(preset="local")) == NodeConfig(preset="local").timings.lease_ttl
    assert grace(NodeConfig(preset="lan", restart_grace=42)) == 42
    assert grace(NodeConfig(restart_grace=-1)) == 0  # no `restarting/` mark: tasks move as for a crash


# -- proxy workers (decision 76) ---------------------------------------------------------


def test_proxy_workers_default_to_auto_one_per_usable_core(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import node.model.config as config

    monkeypatch.setattr(config.os, "sched_getaffinity", lambda _pid: {0, 1, 2})
    assert NodeConfig().proxy_workers == 3
    assert load({}, {}).proxy_workers == 3
    assert load({}, {"SHOAL_PROXY_WORKERS": " Auto "}).proxy_workers == 3
    assert load({}, {}, toml(tmp_path, 'proxy_workers = "auto"')).proxy_workers == 3
    assert load({}, {}, toml(tmp_path, "proxy_workers = 0")).proxy_workers == 0  # the daemon serves
    assert load({"proxy_workers": "5"}, {"SHOAL_PROXY_WORKERS": "auto"}).proxy_workers == 5  # flag first
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda _pid: set())  # never below one
    assert load({}, {"SHOAL_PROXY_WORKERS": "auto"}).proxy_workers == 1


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("many", "expected auto (one worker per core) or a whole number"),
        ("1.5", "expected auto"),
        ("257", "must be auto (one per core), 0 (the daemon serves the published ports itself) or up to 256"),
        ("-1", "must be auto"),
    ],
)
def test_bad_proxy_workers_are_refused_saying_what_is_allowed(value: str, says: str) -> None:
    with pytest.raises(ConfigError, match=r"^proxy_workers: ") as refused:
        load({}, {"SHOAL_PROXY_WORKERS": value})
    assert says in str(refused.value)
