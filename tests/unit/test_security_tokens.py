"""Join tokens, client tokens and the role table."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.pb import api_pb2
from node.security import ca
from node.security.tokens import (
    ClientToken,
    JoinToken,
    Role,
    StoredToken,
    TokenError,
    allowed,
    least_role,
    parse_role,
)

FINGERPRINT = "ab" * 32


def test_a_join_token_round_trips_and_carries_the_ca_fingerprint() -> None:
    token = JoinToken.new(FINGERPRINT)
    text = str(token)
    assert text.startswith("SHOAL-1-") and len(text) == 8 + 52 + 1 + 32
    assert JoinToken.parse(text) == token
    assert JoinToken.parse(f"  {text.upper()}\n") == token  # pasted in capitals, with a newline
    assert JoinToken.parse(text).ca_fingerprint == FINGERPRINT


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("shoal_abcdefghij_" + "a" * 52, "client token"),
        ("SWMTKN-1-abc-def", "should start with SHOAL-1-"),
        ("SHOAL-2-abc-def", "format this version does not know"),
        ("SHOAL-1-abc-def", "malformed"),
        ("SHOAL-1-" + "a" * 52 + "-" + "b" * 31, "malformed"),
        ("SHOAL-1-" + "a" * 52 + "-" + "b" * 31 + "1", "malformed"),  # 1 is not base32
    ],
)
def test_join_token_parse_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(TokenError, match=message):
        JoinToken.parse(text)


def test_join_token_errors_and_repr_never_show_the_secret() -> None:
    token = JoinToken.new(FINGERPRINT)
    assert token.secret not in repr(token)
    broken = str(token)[:-1] + "!"
    with pytest.raises(TokenError) as info:
        JoinToken.parse(broken)
    assert token.secret[:-1] not in str(info.value)


def test_a_wrong_ca_is_detected_with_both_fingerprints_named() -> None:
    token = JoinToken.new(FINGERPRINT)
    token.check_ca(FINGERPRINT)
    with pytest.raises(
        TokenError, match=r"\(sha256 cdcdcdcdcdcdcdcd…\) is not the one this join token pins \(sha256 abab"
    ):
        token.check_ca("cd" * 32)


def test_the_join_key_is_derived_from_the_secret_and_bound_to_the_ca() -> None:
    token = JoinToken.new(FINGERPRINT)
    again = JoinToken.parse(str(token))
    assert ca.key_id(token.private_key()) == ca.key_id(again.private_key())
    assert ca.key_id(token.private_key()) != ca.key_id(JoinToken.new(FINGERPRINT).private_key())
    assert ca.key_id(token.private_key()) != ca.key_id(replace(token, ca_fingerprint="cd" * 32).private_key())


def test_a_client_token_round_trips_and_is_stored_only_as_a_hash() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    token, record = StoredToken.issue(Role.DEPLOYER, "ci", now=now)
    assert str(token).startswith(f"shoal_{token.id}_") and len(str(token)) == 6 + 10 + 1 + 52
    assert ClientToken.parse(str(token)) == token
    assert (
        record.id == token.id and record.role == "deployer" and record.created == "2030-01-01T00:00:00+00:00"
    )
    assert token.secret not in record.to_json().decode() and token.secret not in repr(token)
    assert record.hash.startswith("sha256:")
    assert StoredToken.from_json(record.to_json()) == record
    assert record.matches(token)
    assert not record.matches(replace(token, secret=ClientToken.new().secret))
    assert record.problem(now) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("SHOAL-1-" + "a" * 52 + "-" + "b" * 32, "join token"),
        ("shoal_abc_def", "malformed"),
        ("Bearer shoal_abcdefghij_" + "a" * 52, "malformed"),
        ("shoal_ABCDEFGHIJ_" + "a" * 52, "malformed"),
    ],
)
def test_client_token_parse_errors(text: str, message: str) -> None:
    with pytest.raises(TokenError, match=message):
        ClientToken.parse(text)


@given(st.text(max_size=120))
def test_parsing_anything_raises_only_token_errors(text: str) -> None:
    for parse in (ClientToken.parse, JoinToken.parse):
        with contextlib.suppress(TokenError):
            parse(text)


def test_revoked_expired_and_unknown_role_records_say_why() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    _, record = StoredToken.issue(Role.VIEWER, expires=now + timedelta(hours=1), now=now)
    assert record.problem(now) is None
    assert (
        record.problem(now + timedelta(hours=1)) == f"token {record.id} expired at 2030-01-01T01:00:00+00:00"
    )
    assert replace(record, revoked="2030-01-01T00:30:00+00:00").problem(now) == (
        f"token {record.id} was revoked at 2030-01-01T00:30:00+00:00"
    )
    assert "unknown role 'root'" in (replace(record, role="root").problem(now) or "")


def _methods() -> list[str]:
    service = api_pb2.DESCRIPTOR.services_by_name["Shoal"]
    return [f"/{service.full_name}/{m.name}" for m in service.methods]


def test_viewers_read_deployers_change_services_admins_do_everything() -> None:
    reads = {
        "GetService",
        "ListServices",
        "ServiceHistory",
        "ListTasks",
        "ListNodes",
        "Resolve",
        "WatchResolve",
    }
    reads |= {"StreamEvents", "WatchMembers", "ServiceLogs"}  # logs: whoever reads the status
    writes = {"ApplyService", "ScaleService", "DeleteService", "RollbackService", "Exec"}  # exec: issue 14
    reads |= {"ListStacks"}  # stacks (docs/stacks.md): as their services
    writes |= {"DeployStack", "RemoveStack"}
    reads |= {"TaskUsage"}  # usage per task (issue 14): as the tasks' status
    reads |= {"UsageReport"}  # metered usage and cost (issue 15); SetUsageRates stays admin-only
    for method in _methods():
        name = method.rsplit("/", 1)[1]
        assert allowed(Role.ADMIN, method)
        if name in reads:
            assert allowed(Role.VIEWER, method) and allowed(Role.DEPLOYER, method), method
            assert least_role(method) is Role.VIEWER
        elif name in writes:
            assert not allowed(Role.VIEWER, method) and allowed(Role.DEPLOYER, method), method
            assert least_role(method) is Role.DEPLOYER
        else:  # a method added since: admin-only until someone classifies it
            assert least_role(method) is Role.ADMIN, method
    assert allowed(Role.DEPLOYER, "/shoal.v1.Shoal/RollbackService")


def test_every_method_the_role_tables_name_is_a_method_of_the_api() -> None:
    """The viewer table named `StreamLogs`, which no proto defines: a method of that name
    added later would have been open to viewers without anyone deciding so. `WhoAmI` is
    the dashboard's name for "any viewer", not an RPC."""
    from node.security.tokens import DEPLOYER_METHODS

    defined = {m.rsplit("/", 1)[1] for m in _methods()}
    assert DEPLOYER_METHODS - defined == {"WhoAmI"}


def test_viewers_read_jobs_and_runs_and_nothing_else_of_the_jobs_service() -> None:
    """Issue 18: `shoal.v1.Jobs` is in the table by (service, method); its reads are a
    viewer's (deployers and admins too), and a method it may gain later is admin-only."""
    from node.pb import jobs_pb2

    methods = [f"/shoal.v1.Jobs/{m}" for m in jobs_pb2.DESCRIPTOR.services_by_name["Jobs"].methods_by_name]
    assert sorted(m.rsplit("/", 1)[1] for m in methods) == ["GetJob", "ListJobs", "ListRuns"]
    for method in methods:
        assert least_role(method) is Role.VIEWER, method
        assert all(allowed(role, method) for role in Role)
    for later in ("/shoal.v1.Jobs/RunJob", "/shoal.v1.Jobs/DeleteRun", "/shoal.v1.Shoal/ListJobs"):
        assert least_role(later) is Role.ADMIN and not allowed(Role.DEPLOYER, later), later
    assert not allowed(Role.VIEWER, "/shoal.v1.Shoal/ApplyService"), "a viewer cannot start a run"


@pytest.mark.parametrize(
    "method",
    [
        "/shoal.v1.Shoal/CreateToken",  # not in the table: admin-only
        "/shoal.v1.Shoal/DrainNode",
        "/shoal.v1.Peer/Ping",  # another service, even with a readable name
        "/shoal.v1.Other/GetService",
        "/shoal.v1.Shoal/",
        "shoal.v1.Shoal/GetService",
        "/shoal.v1.Shoal/GetService/x",
    ],
)
def test_the_table_fails_closed(method: str) -> None:
    assert allowed(Role.ADMIN, method)
    assert not allowed(Role.DEPLOYER, method)
    assert not allowed(Role.VIEWER, method)
    assert least_role(method) is Role.ADMIN


def test_roles_parse_with_a_helpful_error() -> None:
    assert parse_role(" Viewer ") is Role.VIEWER
    with pytest.raises(TokenError, match="use one of admin, deployer, viewer"):
        parse_role("root")
