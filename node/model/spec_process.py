"""The container's process (issue 13 item 2, decision 70): entrypoint, user, working_dir,
read_only. Each None: the image's own (its ENTRYPOINT, USER, WORKDIR; a writable root).

Pure: pydantic only.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

_USER = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?"


def _fail(msg: str) -> PydanticCustomError:
    return PydanticCustomError("spec", "{msg}", {"msg": msg})


def _user(v: str) -> str:
    if not re.fullmatch(_USER, v):
        raise _fail(f"must be USER or UID, optionally :GROUP or :GID (e.g. 1000:1000 or app), got {v!r:.80}")
    return v


def _workdir(v: str) -> str:
    if not v.startswith("/") or ".." in v.split("/") or len(v) > 1024 or "\0" in v:
        raise _fail(f"must be an absolute directory such as /app (no '..'), got {v!r:.80}")
    return v


def _words(v: list[str]) -> list[str]:
    if any(len(w) > 4096 or "\0" in w for w in v):
        raise _fail("each word is at most 4096 characters, without NUL")
    return v


Entrypoint = Annotated[list[str], Field(min_length=1, max_length=64), AfterValidator(_words)]
User = Annotated[str, AfterValidator(_user)]
WorkingDir = Annotated[str, AfterValidator(_workdir)]
