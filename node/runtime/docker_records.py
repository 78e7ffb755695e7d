"""Docker's answers read into shoal's records: the list endpoint's summaries and an
inspect into `Container` (host ports, address, state, Docker's HEALTHCHECK verdict), and
an exec's multiplexed output into text. Pure: plain dicts and bytes in, no Docker SDK;
`node.runtime.docker` makes the calls."""

from __future__ import annotations

from typing import Any

from node.runtime.base import Container, DockerHealth

NEVER = "0001-01-01T00:00:00Z"  # Docker's StartedAt of a container never started


def has_health(summary: dict[str, Any]) -> bool:
    """The list endpoint's Status says "Up 5 seconds (healthy)" for a container with a HEALTHCHECK."""
    status = summary.get("Status") or ""
    return "(health" in status or "healthy)" in status


def demux(data: bytes) -> str:
    """Docker's multiplexed stream (8-byte frame headers) to text; plain bytes pass through."""
    out, i = bytearray(), 0
    while i + 8 <= len(data) and data[i] in (0, 1, 2) and data[i + 1 : i + 4] == b"\0\0\0":
        size = int.from_bytes(data[i + 4 : i + 8], "big")
        out += data[i + 8 : i + 8 + size]
        i += 8 + size
    out += data[i:]
    return out.decode(errors="replace").strip()


def _ip(settings: dict[str, Any]) -> str:
    if settings.get("IPAddress"):
        return str(settings["IPAddress"])
    for net in (settings.get("Networks") or {}).values():
        if (net or {}).get("IPAddress"):
            return str(net["IPAddress"])
    return ""


def _docker_health(attrs: dict[str, Any]) -> DockerHealth | None:
    health = (attrs.get("State") or {}).get("Health")
    if not health or not health.get("Status") or health["Status"] == "none":
        return None
    log = (health.get("Log") or [{}])[-1] or {}
    check = (attrs.get("Config") or {}).get("Healthcheck") or {}
    return DockerHealth(
        status=health["Status"],
        failing_streak=int(health.get("FailingStreak") or 0),
        retries=int(check.get("Retries") or 3),
        message=" ".join(str(log.get("Output") or "").split())[:500],
        at=str(log.get("End") or ""),
    )


def from_summary(summary: dict[str, Any], started_at: str) -> Container:
    """A running container from the list endpoint (no exit code or error there)."""
    ports: dict[int, int] = {}
    for p in sorted(summary.get("Ports") or [], key=lambda p: p.get("Type") != "tcp"):
        if p.get("PublicPort"):
            ports.setdefault(int(p["PrivatePort"]), int(p["PublicPort"]))
    names = summary.get("Names") or ["/"]
    return Container(
        id=summary["Id"],
        name=names[0].lstrip("/"),
        labels=dict(summary.get("Labels") or {}),
        state=summary.get("State", ""),
        host_ports=ports,
        started_at=started_at,
        ip=_ip(summary.get("NetworkSettings") or {}),
    )


def from_inspect(attrs: dict[str, Any]) -> Container:
    state = attrs.get("State") or {}
    ports: dict[int, int] = {}
    bound = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
    for key, bindings in sorted(bound.items(), key=lambda kv: not kv[0].endswith("/tcp")):
        for binding in bindings or []:
            if binding.get("HostPort"):
                ports.setdefault(int(key.partition("/")[0]), int(binding["HostPort"]))
    started_at = state.get("StartedAt") or ""
    finished_at = state.get("FinishedAt") or ""
    return Container(
        id=attrs["Id"],
        name=(attrs.get("Name") or "").lstrip("/"),
        labels=dict((attrs.get("Config") or {}).get("Labels") or {}),
        state=state.get("Status", ""),
        exit_code=int(state.get("ExitCode") or 0),
        host_ports=ports,
        started_at="" if started_at == NEVER else started_at,
        finished_at="" if finished_at == NEVER or state.get("Running") else finished_at,
        error=state.get("Error") or "",
        ip=_ip(attrs.get("NetworkSettings") or {}),
        docker_health=_docker_health(attrs),
    )
