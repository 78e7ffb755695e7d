"""What a refused spec says: every problem, each with its field path and its place in the file.

Apart from `node.model.spec` so that the spec's models stay under the module bound; `node.model.spec`
re-exports both names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    path: str  # "ports[0].published", "name", "" for the document itself
    message: str  # what is wrong and what is allowed
    line: int | None  # 1-based, when known
    column: int | None  # 1-based, when known


class SpecError(ValueError):
    """A spec was refused; `errors` lists every problem found."""

    def __init__(self, source: str, errors: list[FieldError]) -> None:
        super().__init__(source, errors)
        self.source = source
        self.errors = errors

    def __str__(self) -> str:
        lines = []
        for e in self.errors:
            where = f"{self.source}:{e.line}:{e.column}" if e.line is not None else self.source
            lines.append(f"{where}: {e.path + ': ' if e.path else ''}{e.message}")
        return "\n".join(lines)


def fatal(source: str, message: str, line: int | None = None, column: int | None = None) -> SpecError:
    return SpecError(source, [FieldError("", message, line, column)])
