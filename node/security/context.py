"""The CLI's credentials: which node to call, the cluster CA, its certificate and its token.

Each piece is taken from, highest first: what the caller passes (flags), the
environment, the context file.

- `SHOAL_TOKEN`: the client token itself. Prefer it (or the file) to a `--token` flag:
  process arguments are visible to every user of the host in `ps`.
- `SHOAL_CA`, `SHOAL_CERT`, `SHOAL_KEY`: paths to the CA certificate, the client
  certificate and its key (PEM; key and certificate may also be one file).
- `SHOAL_ADDR`: a node's "host:port", or several comma-separated (the client moves to
  the next when a node does not answer); `SHOAL_CONTEXT`: which context of the file.
- `SHOAL_CONTEXT_FILE`: the file, by default `$XDG_CONFIG_HOME/shoal/context.json`
  (`~/.config/shoal/context.json`), mode 0600, written by `shoal cluster init` and
  `shoal dev`:

    {"current": "dev",
     "contexts": {"dev": {"endpoint": "127.0.0.1:7070,127.0.0.2:7070", "ca": "<PEM>",
                          "cert": "<PEM>", "key": "<PEM>", "token": "shoal_…"}}}

Missing pieces raise `MissingCredentials`, naming each and how to get it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from node.security.files import read_secret, split_identity, write_secret
from node.security.tls import ClientTls  # grpc-free until a credential is made

FIELDS = ("endpoint", "ca", "cert", "key", "token")


class MissingCredentials(Exception):
    """The CLI lacks some credential; the message says which ones and how to get them."""


@dataclass(frozen=True, repr=False)
class Context:
    endpoint: str
    ca: str  # PEM
    cert: str  # PEM
    key: str  # PEM
    token: str

    def __repr__(self) -> str:
        return f"Context(endpoint={self.endpoint!r})"

    def tls(self) -> ClientTls:
        return ClientTls(self.ca.encode(), self.key.encode(), self.cert.encode(), self.token)


def context_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("SHOAL_CONTEXT_FILE"):
        return Path(env["SHOAL_CONTEXT_FILE"])
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "shoal" / "context.json"


def load_contexts(path: Path) -> tuple[str, dict[str, dict[str, str]]]:
    """(current name, contexts) from the file; ("", {}) when there is none."""
    try:
        data = json.loads(read_secret(path))
    except FileNotFoundError:
        return "", {}
    except json.JSONDecodeError as exc:
        raise MissingCredentials(
            f"{path} is not valid JSON ({exc}); remove it and run `shoal dev` again"
        ) from None
    return str(data.get("current", "")), dict(data.get("contexts", {}))


def save_context(name: str, context: Context, path: Path | None = None, current: bool = True) -> Path:
    """Add or replace the context `name` in the file (0600), making it current by default."""
    path = path or context_path()
    previous, contexts = load_contexts(path)
    contexts[name] = asdict(context)
    data = {"current": name if current or not previous else previous, "contexts": contexts}
    write_secret(path, json.dumps(data, indent=2, sort_keys=True).encode())
    return path


def use_context(name: str, path: Path | None = None) -> Path:
    """Make `name` the current context of the file; `MissingCredentials` naming the known
    ones when there is no such context (the file is left as it was)."""
    path = path or context_path()
    _, contexts = load_contexts(path)
    if name not in contexts:
        known = ", ".join(sorted(contexts)) or "none"
        raise MissingCredentials(f"no context {name!r} in {path} (known: {known})")
    data = {"current": name, "contexts": contexts}
    write_secret(path, json.dumps(data, indent=2, sort_keys=True).encode())
    return path


def _read(path: str, what: str, secret: bool = False) -> str:
    try:
        data = Path(path).read_bytes()
        if secret or b"PRIVATE KEY-----" in data:
            data = read_secret(Path(path))
        return data.decode()
    except OSError as exc:
        raise MissingCredentials(f"cannot read the {what} at {path}: {exc.strerror or exc}") from None


def resolve(
    env: Mapping[str, str] | None = None,
    path: str | os.PathLike[str] | None = None,
    name: str | None = None,
    **given: str | None,
) -> Context:
    """The credentials to call a cluster with; `given` are flag values (`endpoint`, `token`,
    and paths `ca`, `cert`, `key`), which win over the environment and the file."""
    env = os.environ if env is None else env
    path = Path(path) if path else context_path(env)
    current, contexts = load_contexts(path)
    name = name or env.get("SHOAL_CONTEXT") or current
    if name and name not in contexts and (contexts or env.get("SHOAL_CONTEXT")):
        known = ", ".join(sorted(contexts)) or "none"
        raise MissingCredentials(f"no context {name!r} in {path} (known: {known})")
    values: dict[str, str] = {k: str(v) for k, v in contexts.get(name, {}).items() if k in FIELDS and v}
    from_env = {"endpoint": "SHOAL_ADDR", "token": "SHOAL_TOKEN"}
    for field, var in from_env.items():
        value = given.get(field) or env.get(var)
        if value:
            values[field] = value
    for field, var in {"ca": "SHOAL_CA", "cert": "SHOAL_CERT", "key": "SHOAL_KEY"}.items():
        where = given.get(field) or env.get(var)
        if where:
            values[field] = _read(
                where,
                {"ca": "CA certificate", "cert": "client certificate", "key": "key"}[field],
                field == "key",
            )
    if "key" not in values and "PRIVATE KEY-----" in values.get("cert", ""):
        try:
            key, cert = split_identity(values["cert"].encode(), "the client certificate file")
        except ValueError as exc:
            raise MissingCredentials(str(exc)) from None
        values["key"], values["cert"] = key.decode(), cert.decode()
    missing = [f for f in ("ca", "cert", "key", "token") if not values.get(f)]
    if missing:
        raise MissingCredentials(_missing_message(missing, path))
    return Context(
        values.get("endpoint", "127.0.0.1:7070"), values["ca"], values["cert"], values["key"], values["token"]
    )


_HOW = {
    "token": "a client token: SHOAL_TOKEN (an admin makes one with `shoal token create --role viewer`)",
    "ca": "the cluster CA certificate: SHOAL_CA=<path> (every node has it in <data_dir>/tls/ca.crt)",
    "cert": "a client certificate: SHOAL_CERT=<path> (issued with your token)",
    "key": "the client certificate's key: SHOAL_KEY=<path>",
}


def _missing_message(missing: list[str], path: Path) -> str:
    lines = "; ".join(_HOW[m] for m in missing)
    return (
        f"missing credentials: {', '.join(missing)}. Give {lines}. Or use a context file ({path}), "
        "which `shoal cluster init` and `shoal token create` write; for a `shoal dev` cluster: "
        "export SHOAL_CONTEXT_FILE=.shoal-dev/context.json"
    )
