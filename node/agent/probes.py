"""The I/O of health checks: one probe of one replica, as (passed, message).

- `http`: GET `path` on the container's own address (its IP on the Docker network) at
  the container port, over http or https; the answer is read whole by
  `node.agent.http_probe` (llhttp, bounded) and passes on `status`, or any 2xx-3xx.
- `tcp`: a TCP connection to the container's address and port is accepted.
- `exec`: the command runs in the container (`Runtime.exec`); passes on exit code 0.
- `grpc`: `grpc.health.v1.Health/Check` for the check's service over h2c at the
  container's address and port (`node.agent.grpc_probe`); passes on SERVING.

Why the container's address and not the published host port: Docker's userland proxy
holds the published port and accepts connections on the application's behalf even
when nothing listens inside, so a tcp check there would pass with the application
dead. The container address reaches the application itself, and works for ports that
are not published. A container without an address on this host (a network mode
without one) is checked on its published port instead.

Every probe ends within the check's `timeout` and never raises: a failure is a result.
"""

from __future__ import annotations

import asyncio
import os
import ssl

from node.agent import grpc_probe, http_probe
from node.agent.health import Check, NotChecked
from node.runtime.base import Container, EngineError, Runtime, RuntimeUnavailable

SIMULATED = "io.shoal.simulated"  # node.dev.simruntime's label: nothing runs, every check passes
MESSAGE_LIMIT = 300  # characters of a probe's message kept (exec output can be long)


class Prober:
    def __init__(self, runtime: Runtime, publish_address: str) -> None:
        self.runtime = runtime
        self.publish_address = publish_address

    async def probe(self, check: Check, c: Container) -> tuple[bool, str]:
        if c.labels.get(SIMULATED) == "true":
            return True, "simulated replica (node.dev.simruntime): nothing to check"
        try:
            if check.kind == "exec":
                return await self._exec(check, c)
            host, port = self.target(check, c)
            if not port:
                return False, f"container port {check.port} has no address to check (no IP, not published)"
            async with asyncio.timeout(check.timeout):
                if check.kind == "http":
                    return await self._http(check, host, port)
                if check.kind == "grpc":
                    return await grpc_probe.check(host, port, check.service, check.timeout)
                return await self._tcp(host, port)
        except TimeoutError:
            return False, f"{check.describe()}: no answer within {check.timeout:g}s"
        except http_probe.BadAnswer as exc:
            return False, _clip(f"GET {check.path}: {exc}")
        except ssl.SSLError as exc:  # before OSError, its base: errno 1 would read "not permitted"
            return False, _clip(f"{check.describe()}: TLS: {exc.reason or exc}")
        except OSError as exc:  # asyncio's "Connect call failed (...)" says less than the errno
            return False, f"{check.describe()}: {os.strerror(exc.errno) if exc.errno else exc}"
        except EngineError as exc:
            return False, _clip(str(exc))

    def target(self, check: Check, c: Container) -> tuple[str, int]:
        if c.ip:
            return c.ip, check.port
        return self.publish_address, c.host_ports.get(check.port, 0)

    async def _http(self, check: Check, host: str, port: int) -> tuple[bool, str]:
        target = http_probe.Target(host, port, check.path, check.scheme, check.tls_verify, check.host)
        answer = await http_probe.get(target, check.timeout)
        return http_probe.verdict(target, check.status, answer)

    async def _tcp(self, host: str, port: int) -> tuple[bool, str]:
        _, writer = await asyncio.open_connection(host, port)
        writer.transport.abort()
        return True, f"tcp :{port} accepted"

    async def _exec(self, check: Check, c: Container) -> tuple[bool, str]:
        bound = asyncio.timeout(check.timeout + 2.0)
        try:
            # The runtime bounds the exec itself (its TimeoutError: the command ran too long,
            # the replica's failure); this bounds a Docker call that hangs (not its failure).
            async with bound:
                result = await self.runtime.exec(c.id, check.command, check.timeout)
        except TimeoutError:
            if not bound.expired():
                return False, f"{check.describe()}: did not finish within {check.timeout:g}s"
            raise NotChecked(
                f"not checked: the engine did not answer the exec within {check.timeout + 2.0:g}s"
            ) from None
        except RuntimeUnavailable as exc:
            raise NotChecked(_clip(f"not checked: {exc}")) from None
        out = " ".join(result.output.split())
        if result.exit_code == 0:
            return True, "exit 0"
        return False, _clip(f"exit {result.exit_code}" + (f": {out}" if out else ""))


def _clip(text: str) -> str:
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."
