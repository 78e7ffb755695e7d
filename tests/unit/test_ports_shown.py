"""A port's fast path reaches the CLI: `service ls` and `-o json` say `kernel`."""

from __future__ import annotations

from node.api.convert import service
from node.cli.output import port_dict, ports_text
from node.model.domain import ServiceRecord

SPEC = {
    "name": "db",
    "image": "x:1",
    "replicas": 1,
    "ports": [
        {"container": 5432, "published": 15432, "fast_path": "kernel"},
        {"container": 8080, "published": 18080, "protocol": "http"},
        {"container": 9000},
    ],
}


def test_a_kernel_port_is_shown_as_such_and_the_others_as_before() -> None:
    msg = service(ServiceRecord("db", 1, SPEC), [])
    assert [p.fast_path for p in msg.ports] == ["kernel", "", ""]
    assert ports_text(msg.ports) == "15432->5432/tcp+kernel,18080->8080/http,9000/tcp"
    assert [port_dict(p) for p in msg.ports] == [
        {"container": 5432, "published": 15432, "protocol": "tcp", "fast_path": "kernel"},
        {"container": 8080, "published": 18080, "protocol": "http"},
        {"container": 9000, "published": 0, "protocol": "tcp"},
    ]
