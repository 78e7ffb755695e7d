"""Signs that tell the truth: the docs keep up with the code.

- Every package under `node/` and `leader/` (a directory with `__init__.py`; the
  generated `node/pb` aside) is named in docs/architecture.md, as `node/x` or `node.x`.
  Packages are found on disk, so a new one fails here until the page names it.
- "planned" in the README or docs/ stands next to the issue that plans it (`#NN` or
  `issue NN`): a feature that is built is not called planned, and one that is not built
  says where its plan is.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
NOT_DOCUMENTED = {"node/pb"}  # generated stubs (docs/architecture.md names proto/ and node/pb as one)
ISSUE = re.compile(r"#\d+|\bissues? \d+", re.IGNORECASE)
PLANNED = re.compile(r"\bplanned\b", re.IGNORECASE)
NEAR = 120  # characters either side of "planned", within its paragraph


def packages() -> list[str]:
    found = []
    for top in ("node", "leader"):
        for init in sorted((ROOT / top).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT).as_posix()
            if rel in ("node", "leader") or any(rel == d or rel.startswith(d + "/") for d in NOT_DOCUMENTED):
                continue
            if "__pycache__" in rel:
                continue
            found.append(rel)
    return found


def mentions(text: str, package: str) -> bool:
    """`node/agent` or `node.agent`, not as part of a longer name (`node/agents`)."""
    spellings = (package, package.replace("/", "."))
    return any(re.search(rf"(?<![\w./]){re.escape(s)}(?!\w)", text) for s in spellings)


def unplanned(text: str) -> list[str]:
    """Every "planned" without an issue number near it, with its context."""
    bad = []
    for paragraph in re.split(r"\n\s*\n", text):
        for m in PLANNED.finditer(paragraph):
            window = paragraph[max(0, m.start() - NEAR) : m.end() + NEAR]
            if not ISSUE.search(window):
                bad.append(" ".join(window.split()))
    return bad


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_packages_are_found() -> None:
    found = packages()
    assert {"node/agent", "node/security", "leader/placement"} <= set(found), found
    assert "node/pb" not in found


@pytest.mark.parametrize("package", packages())
def test_every_package_is_in_the_architecture_page(package: str) -> None:
    assert mentions(ARCHITECTURE.read_text(), package), (
        f"docs/architecture.md does not name the package {package}: add it to the Components "
        f"table (as `{package}/`) with what it does"
    )


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_planned_names_its_issue(path: Path) -> None:
    bad = unplanned(path.read_text())
    assert not bad, (
        f"{path.relative_to(ROOT)}: 'planned' without an issue number (#NN or 'issue NN') near it; "
        "if it is built, say so, else name the issue that plans it:\n  " + "\n  ".join(bad)
    )


def test_the_checks_themselves() -> None:
    assert mentions("the agent (`node/agent/`) runs", "node/agent")
    assert mentions("see node.agent.health", "node/agent")
    assert not mentions("`node/agents/`", "node/agent")
    assert not mentions("`leader/placement2`", "leader/placement")
    assert unplanned("Logs are planned (issue 14).\n\nAutoscaling is planned: #15.") == []
    assert unplanned("Placing by capacity is planned.\n\nAnother paragraph, issue 15.") != []
