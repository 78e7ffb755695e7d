"""One call of a pool's provider: a command, JSON on stdin, JSON on stdout (issue 15).

The leader runs `provider.command` with one request on stdin and reads one JSON object
from stdout; exit status 0 is success. Requests:

    {"action": "create", "pool": "burst",
     "node": {"id": "burst-1f2e3d4c", "cpu": 2.0, "memory": 4294967296, "labels": {...}},
     "cluster": {"name": "prod", "etcd": ["10.0.0.1:2379"], "etcd_prefix": "/shoal/v1/",
                 "join_token": "SHOAL-1-...", "vip_range": "10.213.0.0/16", "grpc_port": 7070,
                 "etcd_tls": {"ca": "/etc/shoal/etcd-ca.pem", "cert": "...", "key": "..."}}}
    {"action": "delete", "pool": "burst", "node": {"id": "burst-1f2e3d4c", "provider_id": "i-0abc"},
     "cluster": {"name": "prod"}}

Answers: `{"id": "<the provider's own id>", "address": "<where the node is>"}` to a
create (both optional), anything (or nothing) to a delete. Both must be idempotent per
`node.id`: the leader may call create again for a node it asked for when it does not
know the outcome (its predecessor died mid-call), and delete for a node already gone.
The join token travels on stdin only, never on a command line. `vip_range` must be
given to every node (it is the same on all); `grpc_port` is the leader's; `etcd_tls` are
the paths of the leader's etcd client files on the leader's host (empty: plaintext):
a provider on that host may use them, a remote one brings its own.

A call longer than the pool's `timeout` is killed (its whole process group) and fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from typing import Any

MAX_OUTPUT = 64 * 1024


class ProviderError(Exception):
    """The provider failed; the message says how (exit status and its stderr, or timeout)."""


async def call(command: tuple[str, ...], request: dict[str, Any], timeout: float) -> dict[str, Any]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise ProviderError(f"cannot run provider {command[0]!r}: {exc.strerror or exc}") from None
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(json.dumps(request).encode())
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        # asyncio.timeout, not wait_for: 3.11's wait_for drops a cancellation that arrives as
        # the killed provider exits (the caller then got the provider's error, not the cancel)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await proc.wait()
        if isinstance(exc, TimeoutError):
            raise ProviderError(f"provider {command[0]!r} took more than {timeout:g}s; killed") from None
        raise
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip()[-400:]
        raise ProviderError(f"provider {command[0]!r} exited with status {proc.returncode}: {tail}")
    text = out[:MAX_OUTPUT].decode(errors="replace").strip()
    if not text:
        return {}
    try:
        answer = json.loads(text)
    except ValueError:
        raise ProviderError(f"provider {command[0]!r} wrote no JSON object: {text[:200]!r}") from None
    if not isinstance(answer, dict):
        raise ProviderError(f"provider {command[0]!r} wrote {type(answer).__name__}, not a JSON object")
    return answer
