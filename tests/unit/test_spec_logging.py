"""The spec's `logging` section (Compose form) and what the container is made with."""

from __future__ import annotations

import pytest

from node.agent.containers import container_spec
from node.model.domain import Assignment, template_hash
from node.model.spec import SpecError, parse_spec

BASE = "name: a\nimage: x:1\n"


def test_logging_is_passed_to_the_container() -> None:
    spec = parse_spec(BASE + "logging:\n  driver: local\n  options: {max-size: 10m, max-file: '3'}\n", "t")
    made = container_spec(Assignment("t1", "a", 1, "n1", 1, 1), spec, "c", "127.0.0.1")
    assert (made.log_driver, made.log_options) == ("local", {"max-size": "10m", "max-file": "3"})
    plain = container_spec(Assignment("t1", "a", 1, "n1", 1, 1), parse_spec(BASE, "t"), "c", "127.0.0.1")
    assert (plain.log_driver, plain.log_options) == ("", {})


def test_a_spec_without_logging_keeps_its_template() -> None:
    spec = parse_spec(BASE, "t")
    assert spec.logging is None
    assert template_hash(spec) == template_hash(parse_spec(BASE + "env: {}\n", "t"))
    assert template_hash(spec) != template_hash(parse_spec(BASE + "logging: {driver: json-file}\n", "t"))


@pytest.mark.parametrize(
    ("section", "says"),
    [
        ("logging: {driver: syslog}", "must be 'json-file' or 'local'"),
        ("logging: {options: {max-size: big}}", "'big' is not a size"),
        ("logging: {options: {labels: x}}", "unknown log option 'labels'"),
        ("logging: {options: {max-file: 3}}", "must be a string"),
        ("logging: {options: {max-file: '0'}}", "is not a number of files"),
        ("logging: {level: debug}", "level"),
    ],
)
def test_bad_logging_is_refused_naming_the_field(section: str, says: str) -> None:
    with pytest.raises(SpecError, match="logging") as err:
        parse_spec(BASE + section + "\n", "t")
    assert says in str(err.value)
