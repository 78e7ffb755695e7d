"""The structured Compose keys: ports, healthcheck, deploy (`node.compose.translate`).

Each function reads one key of a service and fills `svc.out` (the shoal spec being
built), reporting through `svc.error` / `svc.warn` with the key's line. `svc` is the
translator's per-service object (`translate._Service`).

Pure: no grpc, docker or etcd.
"""

from __future__ import annotations

import re
from typing import Any

from node.compose import keys

_PORT = re.compile(
    r"(?:(?P<ip>\[[^\]]*\]|[^:]*):)??(?:(?P<pub>[\d-]+):)?(?P<target>[\d-]+)(?:/(?P<proto>\w+))?"
)
_MAX_RANGE = 64


def _range(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    a, b = int(lo), int(hi or lo)
    if b < a or b - a >= _MAX_RANGE:
        raise ValueError(f"port range {text} is empty or longer than {_MAX_RANGE}")
    return list(range(a, b + 1))


def ports(svc: Any, value: Any) -> None:
    out = svc.out["ports"]
    for i, item in enumerate(value if isinstance(value, list) else []):
        if isinstance(item, dict):
            _long_port(svc, value, i, item, out)
            continue
        text = str(item)
        m = _PORT.fullmatch(text)
        if m is None:
            svc.error(
                value, i, f"ports[{i}]", f"must be [HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL], got {text!r}"
            )
            continue
        if (m["proto"] or "tcp") != "tcp":
            svc.error(value, i, f"ports[{i}]", f"refused: {m['proto']} ports are {keys.NO_UDP}")
            continue
        if m["ip"]:
            svc.warn(
                value,
                i,
                f"ports[{i}]",
                f"host address {m['ip']} ignored: shoal publishes on every node's proxy",
            )
        try:
            targets = _range(m["target"])
            published = _range(m["pub"]) if m["pub"] else [None] * len(targets)
        except ValueError as exc:
            svc.error(value, i, f"ports[{i}]", str(exc))
            continue
        if len(published) != len(targets):
            svc.error(value, i, f"ports[{i}]", "the published and target ranges differ in length")
            continue
        for pub, target in zip(published, targets, strict=True):
            out.append({"container": target, **({"published": pub} if pub else {})})
    if not isinstance(value, list):
        svc.error(svc.body, "ports", "ports", "must be a list")


def _long_port(svc: Any, value: Any, i: int, item: Any, out: list[dict[str, Any]]) -> None:
    if str(item.get("protocol", "tcp")) != "tcp":
        svc.error(value, i, f"ports[{i}].protocol", f"refused: {item['protocol']} ports are {keys.NO_UDP}")
        return
    if item.get("mode") == "host":
        svc.warn(
            item, "mode", f"ports[{i}].mode", "host ignored: shoal publishes on every node's proxy (ingress)"
        )
    if item.get("host_ip"):
        svc.warn(item, "host_ip", f"ports[{i}].host_ip", "ignored: shoal publishes on every node's proxy")
    for k in item:
        if k not in ("target", "published", "protocol", "mode", "host_ip", "name", "app_protocol"):
            svc.error(
                item,
                k,
                f"ports[{i}].{k}",
                "unknown key; a port has target, published, protocol, mode, host_ip",
            )
    try:
        target = int(item["target"])
        pub = item.get("published")
        port: dict[str, Any] = {"container": target}
        if pub not in (None, ""):
            port["published"] = int(str(pub))
        if item.get("app_protocol") in ("http", "grpc", "http2"):  # grpc, http2: decision 61
            port["protocol"] = item["app_protocol"]
        out.append(port)
    except (KeyError, ValueError, TypeError):
        svc.error(
            value, i, f"ports[{i}]", "needs target: a port number, and published: a port number or range"
        )


def healthcheck(svc: Any, hc: Any) -> None:
    if not isinstance(hc, dict):
        svc.error(svc.body, "healthcheck", "healthcheck", "must be a mapping")
        return
    test = hc.get("test")
    if hc.get("disable") is True or (isinstance(test, list) and test[:1] == ["NONE"]):
        svc.warn(svc.body, "healthcheck", "healthcheck", "NONE: no check; an image HEALTHCHECK still applies")
        return
    if isinstance(test, str):
        argv = ["/bin/sh", "-c", test]
    elif isinstance(test, list) and test[:1] == ["CMD"] and len(test) > 1:
        argv = [str(a) for a in test[1:]]
    elif isinstance(test, list) and test[:1] == ["CMD-SHELL"] and len(test) == 2:
        argv = ["/bin/sh", "-c", str(test[1])]
    else:
        svc.error(
            hc, "test", "healthcheck.test", 'must be ["CMD", ...], ["CMD-SHELL", "..."], ["NONE"] or a string'
        )
        return
    # Compose's defaults, where shoal's differ (interval 30s, timeout 30s).
    health: dict[str, Any] = {"exec": argv, "interval": 30.0, "timeout": 30.0}
    for key, as_ in (("interval", "interval"), ("timeout", "timeout"), ("start_period", "start_period")):
        if key in hc:
            svc._duration(hc, key, health, as_)
    if "retries" in hc:
        health["retries"] = hc["retries"]
    if "start_interval" in hc:
        svc.warn(hc, "start_interval", "healthcheck.start_interval", "ignored: checks run every interval")
    for k in hc:
        if k not in ("test", "interval", "timeout", "start_period", "retries", "start_interval", "disable"):
            svc.error(hc, k, f"healthcheck.{k}", "unknown key")
    svc.out["health"] = health


def deploy(svc: Any, d: Any) -> None:
    if not isinstance(d, dict):
        svc.error(svc.body, "deploy", "deploy", "must be a mapping")
        return
    for k in d:
        if k in keys.DEPLOY_IGNORED:
            svc.warn(d, k, f"deploy.{k}", f"ignored: {keys.DEPLOY_IGNORED[k]}")
        elif k not in (
            "replicas",
            "mode",
            "resources",
            "placement",
            "update_config",
            "restart_policy",
            "labels",
        ):
            svc.error(d, k, f"deploy.{k}", "unknown key")
    if "replicas" in d:
        svc.note("replicas", d, "replicas")
        svc.out["replicas"] = d["replicas"]
    if "mode" in d:
        svc.note("mode", d, "mode")
        if d["mode"] in ("replicated-job", "global-job"):
            svc.error(
                d, "mode", "deploy.mode", "refused: jobs (run to completion) are not supported by shoal yet"
            )
        else:
            svc.out["mode"] = d["mode"]
    if isinstance(d.get("resources"), dict):
        _resources(svc, d["resources"])
        svc.note("resources", d, "resources")
    if isinstance(d.get("placement"), dict):
        _placement(svc, d["placement"])
        svc.note("placement", d, "placement")
    if isinstance(d.get("update_config"), dict):
        _update(svc, d["update_config"], d.get("replicas"))
        svc.note("update", d, "update_config")
    if isinstance(d.get("restart_policy"), dict):
        _restart_policy(svc, d["restart_policy"])
        svc.note("restart", d, "restart_policy")


def _resources(svc: Any, r: Any) -> None:
    res: dict[str, Any] = {}
    for part, into in (("limits", "limits"), ("reservations", "")):
        block = r.get(part)
        if not isinstance(block, dict):
            continue
        target: dict[str, Any] = {}
        for k in block:
            if k == "cpus":
                target["cpu"] = svc._cpus(block, k)
            elif k == "memory":
                target["memory"] = svc._size(block, k)
            elif k == "pids":
                svc.warn(block, k, f"deploy.resources.{part}.pids", "ignored: no pids limit yet")
            else:
                svc.error(
                    block, k, f"deploy.resources.{part}.{k}", f"refused: {k} are not supported by shoal yet"
                )
        if into:
            if target:
                res["limits"] = target
        else:
            res.update(target)
    if res:
        svc.out["resources"] = res


def _placement(svc: Any, p: Any) -> None:
    out: dict[str, Any] = {}
    for k in ("constraints", "preferences"):  # iterated below: a number or mapping is not a list
        if p.get(k) is not None and not isinstance(p[k], list):
            svc.error(p, k, f"deploy.placement.{k}", f"must be a list, got {p[k]!r:.60}")
            return
    if p.get("constraints"):
        out["constraints"] = [str(c) for c in p["constraints"]]
    prefs = p.get("preferences") or []
    spreads = [x.get("spread") for x in prefs if isinstance(x, dict) and x.get("spread")]
    if spreads:
        out["spread"] = str(spreads[0])
        if len(spreads) > 1:
            svc.warn(p, "preferences", "deploy.placement.preferences", "only the first spread is used")
    if "max_replicas_per_node" in p:
        out["max_per_node"] = p["max_replicas_per_node"]
    for k in p:
        if k not in ("constraints", "preferences", "max_replicas_per_node"):
            svc.error(p, k, f"deploy.placement.{k}", "unknown key")
    if out:
        svc.out["placement"] = out


def _update(svc: Any, u: Any, replicas: Any) -> None:
    out: dict[str, Any] = {}
    for k in u:
        if k == "parallelism":
            n = u[k]
            out["parallelism"] = (
                n if n != 0 else (replicas if isinstance(replicas, int) and replicas > 0 else 10000)
            )
        elif k in ("delay", "monitor"):
            svc._duration(u, k, out, k)
        elif k in ("failure_action", "order", "max_failure_ratio"):
            out[k] = u[k]
        else:
            svc.error(u, k, f"deploy.update_config.{k}", "unknown key")
    svc.out["update"] = out


def _restart_policy(svc: Any, r: Any) -> None:
    out: dict[str, Any] = {}
    for k in r:
        if k == "condition":
            if r[k] not in ("none", "on-failure", "any"):
                svc.error(
                    r, k, "deploy.restart_policy.condition", f"must be none, on-failure or any, got {r[k]!r}"
                )
            else:
                out["condition"] = keys.RESTART[r[k]]
        elif k in ("delay", "window"):
            svc._duration(r, k, out, k)
        elif k == "max_attempts":
            out["max_attempts"] = r[k]
        else:
            svc.error(r, k, f"deploy.restart_policy.{k}", "unknown key")
    svc.out["restart"] = out
