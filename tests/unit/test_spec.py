"""node.model.spec: valid specs parse and round-trip; bad ones fail with a path, a line and a hint."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from node.model.spec import (
    MAX_MEMORY,
    MAX_SPEC_BYTES,
    MIN_MEMORY,
    FieldError,
    Limits,
    Placement,
    PortSpec,
    Resources,
    ServiceSpec,
    SpecError,
    format_memory,
    parse_spec,
    spec_from_dict,
    spec_to_dict,
)

EXAMPLE = """\
name: web                 # [a-z0-9-], 1..63
image: shoal-demo/web:1
command: ["httpd", "-f", "-p", "8080", "-h", "/www"]   # optional
env: {GREETING: hello}    # optional
replicas: 3               # 0..10000
ports:                    # optional
  - {container: 8080, published: 18080, protocol: http}  # protocol: http | tcp
resources: {cpu: 0.1, memory: 32Mi}                     # optional
"""


def doc(*lines: str) -> str:
    return "\n".join(lines) + "\n"


BASE = ("name: web", "image: shoal-demo/web:1")


def errors_of(text: str) -> list[FieldError]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, "web.yaml")
    return info.value.errors


def test_example_parses() -> None:
    spec = parse_spec(EXAMPLE, "web.yaml")
    assert spec == ServiceSpec(
        name="web",
        image="shoal-demo/web:1",
        command=["httpd", "-f", "-p", "8080", "-h", "/www"],
        env={"GREETING": "hello"},
        replicas=3,
        ports=[PortSpec(container=8080, published=18080, protocol="http")],
        resources=Resources(cpu=0.1, memory=33554432),
    )
    assert spec.resources is not None and spec.resources.memory == 32 * 2**20


def test_example_round_trips_through_json() -> None:
    spec = parse_spec(EXAMPLE)
    stored = json.loads(json.dumps(spec_to_dict(spec)))
    assert stored["resources"] == {"cpu": 0.1, "memory": 33554432}
    assert parse_spec(json.dumps(spec_to_dict(spec))) == spec
    assert spec_from_dict(stored) == spec


def test_defaults_and_none_fields_are_omitted() -> None:
    spec = parse_spec(doc(*BASE))
    assert (spec.replicas, spec.ports, spec.env, spec.command, spec.resources) == (1, [], {}, None, None)
    assert spec_to_dict(spec) == {
        "name": "web",
        "image": "shoal-demo/web:1",
        "env": {},
        "replicas": 1,
        "ports": [],
    }


def test_resources_placement_and_mode() -> None:
    spec = parse_spec(
        doc(
            *BASE,
            "resources: {cpu: 0.5, memory: 256Mi, limits: {cpu: 1, memory: 512Mi}}",
            "placement:",
            '  constraints: ["node.labels.zone == a", "node.labels.disk != hdd", "node.id != n3"]',
            "  spread: node.labels.zone",
            "  max_per_node: 1",
            "  strategy: binpack",
            "mode: global",
        )
    )
    assert spec.resources == Resources(cpu=0.5, memory=256 * 2**20, limits=Limits(cpu=1, memory=512 * 2**20))
    assert spec.placement == Placement(
        constraints=["node.labels.zone == a", "node.labels.disk != hdd", "node.id != n3"],
        spread="node.labels.zone",
        max_per_node=1,
        strategy="binpack",
    )
    assert spec.mode == "global"
    stored = spec_to_dict(spec)
    assert stored["placement"]["max_per_node"] == 1 and stored["mode"] == "global"
    assert spec_from_dict(json.loads(json.dumps(stored))) == spec


def test_specs_without_the_new_fields_store_as_before() -> None:
    stored = spec_to_dict(parse_spec(doc(*BASE, "resources: {cpu: 1}")))
    assert "placement" not in stored and "mode" not in stored and stored["resources"] == {"cpu": 1.0}


def test_env_values_are_normalized_to_strings() -> None:
    spec = parse_spec(doc(*BASE, "env: {A: 1, B: true, C: false, D: 1.5, E: x, F: '007'}"))
    assert spec.env == {"A": "1", "B": "true", "C": "false", "D": "1.5", "E": "x", "F": "007"}


@pytest.mark.parametrize(
    ("written", "size"),
    [
        ("32Mi", 32 * 2**20),
        ("1Gi", 2**30),
        ("8192Ki", 8 * 2**20),
        ("1Ti", 2**40),
        ("500M", 500 * 10**6),
        ("1G", 10**9),
        ("100000k", 10**8),
        ("100000K", 10**8),
        ("0.5Gi", 2**29),
        ("'67108864'", 64 * 2**20),
        ("67108864", 64 * 2**20),
    ],
)
def test_memory_units(written: str, size: int) -> None:
    spec = parse_spec(doc(*BASE, f"resources: {{memory: {written}}}"))
    assert spec.resources == Resources(memory=size)


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (33554432, "32Mi"),
        (2**30, "1Gi"),
        (3 * 2**40, "3Ti"),
        (500 * 10**6, "500M"),
        (1000, "1k"),
        (1234567, "1234567"),
    ],
)
def test_format_memory(size: int, shown: str) -> None:
    assert format_memory(size) == shown


# (text, path, line, column, fragment of the message)
BAD = [
    pytest.param("", "", 1, 1, "the spec is empty: expected a mapping", id="empty"),
    pytest.param("# only a comment\n\n", "", 1, 1, "the spec is empty", id="only-comments"),
    pytest.param(doc("name: web", "image: [a, b", "replicas: 1"), "", 3, 9, "not valid YAML", id="not-yaml"),
    pytest.param(doc(*BASE, "  replicas: 1"), "", 3, 11, "mapping values are not allowed here", id="indent"),
    pytest.param(doc(*BASE, "env:", "\tA: 1"), "", 4, 1, "indent with spaces, not tabs", id="tab"),
    pytest.param(
        doc("- web", "- api"), "", 1, 1, "expected a mapping with at least name and image", id="list"
    ),
    pytest.param(doc(*BASE, "name: api"), "", 3, 1, "duplicate key 'name'", id="duplicate-key"),
    pytest.param(doc("# web", "image: x"), "name", 2, 1, "missing required field 'name'", id="no-name"),
    pytest.param(
        doc("name: Web_1", "image: x"), "name", 1, 1, "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", id="bad-name"
    ),
    pytest.param(doc("name: " + "a" * 64, "image: x"), "name", 1, 1, "1 to 63", id="long-name"),
    pytest.param(doc("name: web"), "image", 1, 1, "missing required field 'image'", id="no-image"),
    pytest.param(doc("name: web", "image: 'a b'"), "image", 2, 1, "no whitespace", id="image-space"),
    pytest.param(
        doc(*BASE, "replica: 3"),
        "replica",
        3,
        1,
        "unknown field 'replica'; did you mean 'replicas'?",
        id="typo",
    ),
    pytest.param(doc(*BASE, "foo: 1"), "foo", 3, 1, "allowed fields: name, image", id="unknown"),
    pytest.param(
        doc(*BASE, "replicas: -1"), "replicas", 3, 1, "between 0 and 10000, got -1", id="replicas-neg"
    ),
    pytest.param(
        doc(*BASE, "replicas: 20000"), "replicas", 3, 1, "between 0 and 10000, got 20000", id="replicas-huge"
    ),
    pytest.param(
        doc(*BASE, "replicas: '3'"), "replicas", 3, 1, "must be an integer, got string '3'", id="replicas-str"
    ),
    pytest.param(
        doc(*BASE, "replicas: true"),
        "replicas",
        3,
        1,
        "must be an integer, got boolean true",
        id="replicas-bool",
    ),
    pytest.param(
        doc(*BASE, "replicas: 2.5"),
        "replicas",
        3,
        1,
        "must be an integer, got number 2.5",
        id="replicas-float",
    ),
    pytest.param(
        doc(*BASE, "ports:", "  - container: 0"),
        "ports[0].container",
        4,
        5,
        "between 1 and 65535, got 0",
        id="port-0",
    ),
    pytest.param(
        doc(*BASE, "ports:", "  - container: 80", "    published: 70000"),
        "ports[0].published",
        5,
        5,
        "between 1 and 65535, got 70000",
        id="port-70000",
    ),
    pytest.param(
        doc(*BASE, "ports: [{container: http}]"),
        "ports[0].container",
        3,
        10,
        "got string 'http'",
        id="port-str",
    ),
    pytest.param(
        doc(*BASE, "ports:", "  - {container: 80, protocol: udp}"),
        "ports[0].protocol",
        4,
        21,
        "must be 'tcp', 'http', 'grpc' or 'http2', got string 'udp'",
        id="protocol",
    ),
    pytest.param(
        doc(*BASE, "ports:", "  - {container: 80, published: 8080}", "  - {container: 81, published: 8080}"),
        "ports[1].published",
        5,
        21,
        "published port 8080 is already used by ports[0]",
        id="dup-published",
    ),
    pytest.param(
        doc(*BASE, "ports:", "  - {container: 80}", "  - {container: 80, published: 8081}"),
        "ports[1].container",
        5,
        6,
        "container port 80/tcp is already in ports[0]",
        id="dup-container",
    ),
    pytest.param(
        doc(*BASE, "ports:", *[f"  - container: {p}" for p in range(1, 66)]),
        "ports",
        3,
        1,
        "at most 64",
        id="65-ports",
    ),
    pytest.param(
        doc(*BASE, "resources:", "  memory: 32MB"),
        "resources.memory",
        4,
        3,
        "Ki, Mi, Gi, Ti",
        id="memory-unit",
    ),
    pytest.param(
        doc(*BASE, "resources:", "  memory: 1Mi"),
        "resources.memory",
        4,
        3,
        "between 6Mi and 1Ti, got 1Mi",
        id="memory-min",
    ),
    pytest.param(
        doc(*BASE, "resources: {cpu: -0.5}"), "resources.cpu", 3, 13, "between 0.01 and 1024", id="cpu-neg"
    ),
    pytest.param(
        doc(*BASE, "resources:", "  cpu: 1", "  mem: 64Mi"),
        "resources.mem",
        5,
        3,
        "did you mean 'memory'?",
        id="res-typo",
    ),
    pytest.param(
        doc(*BASE, "resources: 2"), "resources", 3, 1, "must be a mapping, got number 2", id="res-scalar"
    ),
    pytest.param(
        doc(*BASE, "env:", "  GREETING: [hi]"),
        "env.GREETING",
        4,
        3,
        "string, number or boolean",
        id="env-list",
    ),
    pytest.param(
        doc(*BASE, "env:", "  1ST: x"), 'env["1ST"]', 4, 3, "invalid key: must be letters", id="env-key"
    ),
    pytest.param(doc(*BASE, "env: {SINCE: 2024-01-01}"), "env.SINCE", 3, 7, "quote it", id="env-date"),
    pytest.param(
        doc(*BASE, "command: httpd -f"),
        "command",
        3,
        1,
        'list of strings, e.g. ["httpd", "-f"]',
        id="cmd-str",
    ),
    pytest.param(
        doc(*BASE, "command: [sleep, 10]"), "command[1]", 3, 18, "got number 10 (quote it)", id="cmd-int"
    ),
    pytest.param(doc(*BASE, "command: []"), "command", 3, 1, "must not be empty", id="cmd-empty"),
    pytest.param("#" * (MAX_SPEC_BYTES + 1), "", None, None, f"the limit is {MAX_SPEC_BYTES}", id="too-big"),
    pytest.param(
        doc(*BASE, "resources: {cpu: 0}"), "resources.cpu", 3, 13, "between 0.01 and 1024", id="cpu-0"
    ),
    pytest.param(
        doc(*BASE, "resources:", "  memory: 1Gi", "  limits: {memory: 512Mi}"),
        "resources.limits.memory",
        5,
        12,
        "must be at least the reservation resources.memory (1Gi), got 512Mi",
        id="limit-below-reservation",
    ),
    pytest.param(
        doc(*BASE, "resources: {limits: {memory: 2GB}}"),
        "resources.limits.memory",
        3,
        22,
        "Ki, Mi, Gi, Ti",
        id="limit-unit",
    ),
    pytest.param(
        doc(
            *BASE,
            "placement:",
            "  constraints:",
            "    - node.labels.zone == a",
            "    - node.label.disk != hdd",
        ),
        "placement.constraints[1]",
        6,
        7,
        "unknown attribute 'node.label.disk': use node.id or node.labels.<key> "
        "(did you mean 'node.labels.disk'?)",
        id="constraint-attribute",
    ),
    pytest.param(
        doc(*BASE, "placement: {constraints: ['node.labels.zone = a']}"),
        "placement.constraints[0]",
        3,
        27,
        "unknown operator '=' in 'node.labels.zone = a': use == or !=",
        id="constraint-operator",
    ),
    pytest.param(
        doc(*BASE, "placement: {constraints: [node.labels.zone in a]}"),
        "placement.constraints[0]",
        3,
        27,
        "unknown operator 'in'",
        id="constraint-word-operator",
    ),
    pytest.param(
        doc(*BASE, "placement: {constraints: [zone]}"),
        "placement.constraints[0]",
        3,
        27,
        "must be '<attribute> == <value>' or '<attribute> != <value>'",
        id="constraint-syntax",
    ),
    pytest.param(
        doc(*BASE, "placement: {constraints: ['node.id ==']}"),
        "placement.constraints[0]",
        3,
        27,
        "missing value after '=='",
        id="constraint-value",
    ),
    pytest.param(
        doc(*BASE, "placement: {spread: zone}"),
        "placement.spread",
        3,
        13,
        "must be node.labels.<key>",
        id="spread",
    ),
    pytest.param(
        doc(*BASE, "placement: {max_per_node: 0}"),
        "placement.max_per_node",
        3,
        13,
        "between 1 and 10000, got 0",
        id="max-per-node",
    ),
    pytest.param(
        doc(*BASE, "placement: {strategy: pack}"),
        "placement.strategy",
        3,
        13,
        "must be 'spread' or 'binpack'",
        id="strategy",
    ),
    pytest.param(
        doc(*BASE, "placement: {constrains: []}"),
        "placement.constrains",
        3,
        13,
        "did you mean 'constraints'?",
        id="placement-typo",
    ),
    pytest.param(doc(*BASE, "mode: daemon"), "mode", 3, 1, "must be 'replicated' or 'global'", id="mode"),
]


@pytest.mark.parametrize(("text", "path", "line", "column", "fragment"), BAD)
def test_bad_spec(text: str, path: str, line: int | None, column: int | None, fragment: str) -> None:
    errors = errors_of(text)
    assert len(errors) == 1, errors
    error = errors[0]
    assert (error.path, error.line, error.column) == (path, line, column)
    assert fragment in error.message
    assert "pydantic" not in error.message and "Input should" not in error.message


def test_error_text_names_file_line_column_and_path() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(doc(*BASE, "ports:", "  - container: 80", "    published: 70000"), "web.yaml")
    assert str(info.value) == "web.yaml:5:5: ports[0].published: must be between 1 and 65535, got 70000"
    with pytest.raises(SpecError) as info:
        parse_spec("#" * (MAX_SPEC_BYTES + 1), "big.yaml")
    assert str(info.value).startswith("big.yaml: the spec is ")


def test_every_problem_is_reported_in_document_order() -> None:
    errors = errors_of(
        doc("name: Web", "image: x", "replicas: many", "ports: [{container: 0}]", "colour: red")
    )
    assert [(e.path, e.line) for e in errors] == [
        ("name", 1),
        ("replicas", 3),
        ("ports[0].container", 4),
        ("colour", 5),
    ]


def test_strings_that_docker_cannot_carry_are_refused() -> None:
    [error] = errors_of(doc("name: web", 'image: "x\\0y"'))
    assert (error.path, error.line, error.message) == ("image", 2, "must not contain NUL or DEL characters")


def test_alias_bombs_and_deep_nesting_are_bounded() -> None:
    lines = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]" for p, c in zip("abcdefg", "bcdefgh", strict=True)]
    [error] = errors_of(doc(*lines))
    assert "too big" in error.message
    [error] = errors_of("[" * 100_000)
    assert error.message == "not valid YAML: nested too deeply"
    [error] = errors_of(doc(*BASE, "env: " + "[" * 30 + "]" * 30))
    assert "levels deep" in error.message


def test_spec_from_dict_checks_stored_data() -> None:
    with pytest.raises(SpecError) as info:
        spec_from_dict({"name": "web", "image": "x", "replicas": "2"})
    [error] = info.value.errors
    assert (error.path, error.line, error.column) == ("replicas", None, None)
    assert str(info.value) == "<stored spec>: replicas: must be an integer, got string '2'"


def test_models_are_frozen_and_checked_when_built_directly() -> None:
    spec = parse_spec(EXAMPLE)
    with pytest.raises(ValidationError):
        spec.replicas = 4
    with pytest.raises(ValidationError, match="already used by ports"):
        ServiceSpec(
            name="web",
            image="x",
            ports=[PortSpec(container=80, published=8080), PortSpec(container=81, published=8080)],
        )


# --- properties -------------------------------------------------------------------------------

NAMES = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)
TEXT = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00\x7f"), max_size=20
)  # no NUL, DEL, surrogates


@st.composite
def port_lists(draw: st.DrawFn) -> list[PortSpec]:
    ports: list[PortSpec] = []
    for _ in range(draw(st.integers(0, 5))):
        port = PortSpec(
            container=draw(st.integers(1, 65535)),
            published=draw(st.none() | st.integers(1, 65535)),
            protocol=draw(st.sampled_from(["tcp", "http"])),
        )
        taken = {(p.container, p.protocol) for p in ports}
        if (port.container, port.protocol) not in taken and port.published not in {
            p.published for p in ports if p.published
        }:
            ports.append(port)
    return ports


@st.composite
def specs_and_yaml(draw: st.DrawFn) -> tuple[ServiceSpec, str]:
    name, replicas, ports = draw(NAMES), draw(st.integers(0, 10000)), draw(port_lists())
    image = draw(st.from_regex(r"[a-z0-9][a-z0-9._/-]{0,30}(:[a-z0-9.]{1,10})?", fullmatch=True))
    env = draw(
        st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True), TEXT, max_size=4)
    )
    command = draw(st.none() | st.lists(TEXT, min_size=1, max_size=4))
    cpu = draw(st.none() | st.floats(0.01, 1024) | st.integers(1, 1024))
    memory = draw(st.none() | st.integers(MIN_MEMORY, MAX_MEMORY))
    lines = [f"name: {json.dumps(name)}", f"image: {json.dumps(image)}", f"replicas: {replicas}"]
    if command is not None:
        lines += ["command:", *[f"  - {json.dumps(c)}" for c in command]]
    if env:
        lines += ["env:", *[f"  {k}: {json.dumps(v)}" for k, v in env.items()]]
    if ports:
        lines.append("ports:")
        for p in ports:
            published = f", published: {p.published}" if p.published is not None else ""
            lines.append(f"  - {{container: {p.container}{published}, protocol: {p.protocol}}}")
    resources = None
    if cpu is not None or memory is not None:
        resources = Resources(cpu=cpu, memory=memory)
        shown = memory if memory is None or draw(st.booleans()) else format_memory(memory)
        lines += ["resources:"] + [
            f"  {k}: {v}" for k, v in (("cpu", cpu), ("memory", shown)) if v is not None
        ]
    spec = ServiceSpec(
        name=name, image=image, command=command, env=env, replicas=replicas, ports=ports, resources=resources
    )
    return spec, doc(*lines)


@settings(max_examples=200, deadline=None)
@given(specs_and_yaml())
def test_valid_specs_parse_and_round_trip(case: tuple[ServiceSpec, str]) -> None:
    expected, text = case
    spec = parse_spec(text)
    assert spec == expected
    assert parse_spec(json.dumps(spec_to_dict(spec))) == spec
    assert spec_from_dict(json.loads(json.dumps(spec_to_dict(spec)))) == spec


_KEYS = ["name: ", "image: ", "ports:", "- container: ", "published: ", "protocol: ", "env:", "cpu: "]
_SYNTAX = ["- ", "{", "}", "[", "]", ", ", ": ", "&a ", "*a", "? ", "'", '"', "#", "---", "...", "<<: "]
_VALUES = ["web", "x", "1", "-1", "0x1F", "1e3", "70000", "true", "null", "~", "32Mi", "2024-01-01"]
_ODD = [" ", "  ", "\n", "\t", "\x85", "\\", "\\ud800", "\\0", "|\n", "%YAML 1.1\n", "!foo ", "!!binary "]
YAMLISH = st.sampled_from([*_KEYS, *_SYNTAX, *_VALUES, *_ODD])


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.lists(YAMLISH, max_size=40).map("".join)))
def test_junk_never_raises_anything_but_spec_error(text: str) -> None:
    try:
        parse_spec(text)
    except SpecError as e:
        assert e.errors and all(isinstance(err, FieldError) and err.message for err in e.errors)
        assert "errors.pydantic.dev" not in str(e)
