"""Who may read the dashboard: a client token, given as a bearer header or once at login.

The same tokens and roles as the client API (`node.security.tokens`): every view names
the `shoal.v1.Shoal` method whose data it shows (`ListNodes`, `ServiceLogs`, …) and the
token's role must be allowed to call it, so a viewer sees everything the page shows and
a view of an admin-only method would be refused to it (fail closed, as the API).

Two ways in:
- `Authorization: Bearer shoal_<id>_<secret>` on any request (scripts, tests);
- `POST /login` with the token: the answer sets a session cookie (HttpOnly, Secure,
  SameSite=Strict). The session id is 32 random bytes; the token itself stays in this
  process's memory, never in the browser's cookie jar. Sessions end after `ttl` seconds,
  at `logout`, when the daemon restarts, or when their token is revoked or expires:
  every request checks the token again against the credential store, as the API does.
  A bearer header, when given, is the only credential of its request: a wrong one is
  refused (401) and ends no session the same browser holds.

At most `max_sessions` are kept (the oldest goes first), so logins cannot grow memory.
A refusal is `Refused` with the HTTP status: 401 (no, unknown, wrong, revoked or expired
token), 403 (the role may not read this view), 503 (the store cannot tell now; never
open). Messages name the token by its id only.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from node.security.auth import CredentialStore
from node.security.tokens import CLIENT_SERVICE, ClientToken, Role, TokenError, allowed, least_role

COOKIE = "shoal_dashboard"
SESSION_TTL = 12 * 3600.0  # s a login lasts
MAX_SESSIONS = 1000
PER_TOKEN = 20  # sessions of one token at once: its oldest goes first, not another user's

NO_LOGIN = (
    "log in with a client token (shoal_…): `shoal token create --role viewer` makes one; "
    "or send Authorization: Bearer <token>"
)


class Refused(Exception):
    """A request the dashboard will not answer; `status` is the HTTP status to send."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Viewer:
    """Who is looking: the token's id (never its secret) and role."""

    token_id: str
    role: Role


@dataclass
class _Session:
    token: ClientToken
    ends: float


class Gate:
    def __init__(
        self,
        credentials: CredentialStore,
        ttl: float = SESSION_TTL,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.credentials = credentials
        self.ttl = ttl
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    async def login(self, text: str) -> tuple[str, Viewer]:
        """Check a token and open a session: (session id for the cookie, who)."""
        token = _parse(text)
        viewer = await self._check(token)
        session = secrets.token_urlsafe(32)
        mine = [sid for sid, s in self._sessions.items() if s.token.id == token.id]
        for sid in mine[: max(0, len(mine) + 1 - PER_TOKEN)]:  # one token's logins push out its own
            del self._sessions[sid]
        self._sessions[session] = _Session(token, self.clock() + self.ttl)
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session, viewer

    def logout(self, session: str) -> None:
        self._sessions.pop(session, None)

    async def admit(self, headers: Mapping[str, str], cookies: Mapping[str, str], method: str) -> Viewer:
        """The viewer of a request, if its token may call `method` (a `shoal.v1.Shoal` method name)."""
        token, session = self._token(headers, cookies)
        viewer = await self._check(token, session)
        if not allowed(viewer.role, f"/{CLIENT_SERVICE}/{method}"):
            need = least_role(f"/{CLIENT_SERVICE}/{method}")
            raise Refused(403, f"token {viewer.token_id} has role {viewer.role}; this view needs {need}")
        return viewer

    def _token(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> tuple[ClientToken, str]:
        """The request's token, and the session it came from ("" for a bearer header: a
        wrong header is refused alone, the browser's session stays)."""
        given = headers.get("authorization", "")
        if given:
            scheme, _, text = given.strip().partition(" ")
            if scheme.lower() != "bearer" or not text.strip():
                raise Refused(401, "the authorization header must be `Bearer shoal_<id>_<secret>`")
            return _parse(text), ""
        session = self._sessions.get(cookies.get(COOKIE, ""))
        if session is None:
            raise Refused(401, NO_LOGIN)
        if session.ends <= self.clock():
            self.logout(cookies[COOKIE])
            raise Refused(401, f"the session has ended; {NO_LOGIN}")
        return session.token, cookies[COOKIE]

    async def _check(self, token: ClientToken, session: str = "") -> Viewer:
        try:
            record = await self.credentials.token(token.id)
        except Exception:
            raise Refused(503, "cannot check the token now (the cluster store is unreachable)") from None
        problem = None
        if record is None:
            problem = f"token {token.id} is not known to this cluster"
        elif not record.matches(token):
            problem = f"token {token.id}: the secret is wrong"
        else:
            problem = record.problem()
        if problem is not None or record is None:
            if session:
                self.logout(session)
            raise Refused(401, f"{problem}; {NO_LOGIN}")
        return Viewer(token.id, Role(record.role))


def _parse(text: str) -> ClientToken:
    try:
        return ClientToken.parse(text)
    except TokenError as exc:
        raise Refused(401, f"{exc}; {NO_LOGIN}") from None
