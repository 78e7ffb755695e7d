"""Generate the Python stubs for `proto/shoal/v1/*.proto` into this package.

The stubs live in `node.pb` (never a top-level `proto` package, which would clash
with proto-plus). protoc writes absolute imports (`from shoal.v1 import api_pb2`);
they are rewritten to `from node.pb import api_pb2` so the package is
self-contained.

    python -m node.pb.generate          # regenerate
    python -m node.pb.generate --check  # exit 1 when the checked-in stubs are stale
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
OUT_DIR = Path(__file__).resolve().parent
_IMPORT = re.compile(r"^from shoal\.v1 import (\w+_pb2)", re.MULTILINE)


def render() -> dict[str, str]:
    """Run protoc and return {file name: text} of the stubs it makes."""
    from grpc_tools import protoc  # only needed by developers, not at run time

    sources = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.glob("shoal/v1/*.proto"))
    include = Path(protoc.__file__).resolve().parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *sources,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out: dict[str, str] = {}
        for path in sorted(Path(tmp, "shoal", "v1").glob("*_pb2*.py*")):
            out[path.name] = _IMPORT.sub(r"from node.pb import \1", path.read_text())
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the stubs are stale")
    args = parser.parse_args(argv)
    fresh = render()
    current = {p.name: p.read_text() for p in OUT_DIR.glob("*_pb2*.py*")}
    if args.check:
        stale = sorted(set(fresh.items()) ^ set(current.items()))
        if stale:
            names = sorted({name for name, _ in stale})
            print(f"stale stubs in node/pb: {', '.join(names)}; run: python -m node.pb.generate")
            return 1
        return 0
    for name in set(current) - set(fresh):
        (OUT_DIR / name).unlink()
    for name, text in fresh.items():
        (OUT_DIR / name).write_text(text)
    print(f"wrote {len(fresh)} files to {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
