"""Placement constraints: `node.labels.zone == a`, `node.id != n3`; parsed once, matched often.

Why a module of its own: the spec checks the syntax at apply time (a bad constraint is
refused with the field path and a hint), and the scheduler evaluates the same parsed
form against every node. One parser, so what `apply` accepts is exactly what the
scheduler understands.

Grammar: `<attribute> <operator> <value>`, spaces around the operator optional.
- attribute: `node.id` or `node.labels.<key>` (key: letters, digits, '.', '_', '-',
  as node labels allow);
- operator: `==` or `!=`;
- value: the rest, trimmed, non-empty. Compared as a string, exactly.

A node without the label does not match `==` and does match `!=` (Swarm's rule).

Pure: no grpc, docker or etcd.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass

LABEL_KEY = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9._-]{0,61}[a-zA-Z0-9])?")
OPERATORS = ("==", "!=")
SYNTAX = "'<attribute> == <value>' or '<attribute> != <value>' with attribute node.id or node.labels.<key>"
_WITH_SYMBOL = re.compile(r"\s*([^\s=!<>~]+)\s*([=!<>~]+)\s*(.*?)\s*", re.DOTALL)
_WITH_WORD = re.compile(r"\s*(\S+)\s+(\S+)\s+(.*?)\s*", re.DOTALL)
_LABELS = "node.labels."


class ConstraintError(ValueError):
    """The text is not a constraint; the message says what is wrong and what is allowed."""


@dataclass(frozen=True)
class Constraint:
    """One parsed constraint. `label` is None for `node.id`."""

    label: str | None
    equal: bool
    value: str

    @property
    def attribute(self) -> str:
        return "node.id" if self.label is None else _LABELS + self.label

    def __str__(self) -> str:
        return f"{self.attribute} {'==' if self.equal else '!='} {self.value}"

    def matches(self, node_id: str, labels: Mapping[str, str]) -> bool:
        actual = node_id if self.label is None else labels.get(self.label)
        return (actual == self.value) == self.equal


def parse_label_attribute(text: str) -> str:
    """`node.labels.<key>` -> key; ConstraintError otherwise (used by `placement.spread`)."""
    attribute = text.strip()
    if attribute.startswith(_LABELS) and LABEL_KEY.fullmatch(attribute[len(_LABELS) :]):
        return attribute[len(_LABELS) :]
    raise ConstraintError(f"must be node.labels.<key>, e.g. node.labels.zone; got {text[:60]!r}")


def parse_constraint(text: str) -> Constraint:
    m = _WITH_SYMBOL.fullmatch(text)
    if m is None:
        words = _WITH_WORD.fullmatch(text)
        if words is not None and _attribute_ok(words[1]):
            raise ConstraintError(f"unknown operator {words[2]!r} in {text[:80]!r}: use == or !=")
        raise ConstraintError(f"must be {SYNTAX}, e.g. node.labels.zone == a; got {text[:80]!r}")
    attribute, operator, value = m[1], m[2], m[3]
    if not _attribute_ok(attribute):
        raise ConstraintError(_unknown_attribute(attribute))
    if operator not in OPERATORS:
        raise ConstraintError(f"unknown operator {operator!r} in {text[:80]!r}: use == or !=")
    if not value:
        raise ConstraintError(f"missing value after {operator!r} in {text[:80]!r}")
    label = None if attribute == "node.id" else attribute[len(_LABELS) :]
    return Constraint(label, operator == "==", value)


def _attribute_ok(attribute: str) -> bool:
    if attribute == "node.id":
        return True
    return attribute.startswith(_LABELS) and LABEL_KEY.fullmatch(attribute[len(_LABELS) :]) is not None


def _unknown_attribute(attribute: str) -> str:
    tail = attribute.rsplit(".", 1)[-1]
    labelled = "label" in attribute.lower() and LABEL_KEY.fullmatch(tail) is not None
    candidates = ["node.id"] + ([_LABELS + tail] if labelled else [])
    close = difflib.get_close_matches(attribute, candidates, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown attribute {attribute[:60]!r}: use node.id or node.labels.<key>{hint}"
