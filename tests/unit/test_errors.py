"""One error family for server and client (`node.model.errors`): every class a handler raises
comes back to the client as the same class, through the one `STATUS` table."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

import node.model.errors
import node.wire.client
from node.api.server import handle
from node.model.errors import (
    STATUS,
    CredentialsMissing,
    DeadlineExceeded,
    NotFound,
    ShoalError,
    error_class,
    status_of,
)
from node.wire.client import error_from_rpc


class _Aborted(Exception):
    pass


class _Context:
    """What `handle` needs of a `grpc.aio.ServicerContext`: abort records and raises."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise _Aborted


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def _served(exc: Exception) -> _Context:
    """Raise `exc` in a handler wrapped by the server's `handle`; the context it aborted."""

    class Servicer:
        @handle
        async def Call(self, request: Any, context: Any) -> None:
            raise exc

    context = _Context()
    with pytest.raises(_Aborted):
        asyncio.run(Servicer().Call(None, context))
    return context


@pytest.mark.parametrize("cls", list(STATUS), ids=lambda c: c.__name__)
def test_every_class_comes_back_as_itself(cls: type[ShoalError]) -> None:
    context = _served(cls("what is wrong; what to do"))
    assert context.code is not None and context.code.name == STATUS[cls]
    err = error_from_rpc(_RpcError(context.code, context.details), "h:1")
    assert type(err) is cls
    assert err.code == context.code and err.target == "h:1"
    if cls is DeadlineExceeded:  # the client says which address did not answer in time
        assert "deadline exceeded" in str(err)
    else:
        assert str(err) == "what is wrong; what to do"


def test_the_table_is_one_to_one_and_names_real_status_codes() -> None:
    assert len(set(STATUS.values())) == len(STATUS)
    for cls, status in STATUS.items():
        assert grpc.StatusCode[status].name == status
        assert error_class(status) is cls


def test_a_status_without_a_class_is_the_base() -> None:
    assert error_class("UNIMPLEMENTED") is ShoalError
    assert type(error_from_rpc(_RpcError(grpc.StatusCode.UNKNOWN, "x"), "h:1")) is ShoalError


def test_a_subclass_travels_as_its_nearest_base() -> None:
    class NoSuchToken(NotFound):
        pass

    assert status_of(NoSuchToken("x")) == "NOT_FOUND"
    assert status_of(CredentialsMissing("x")) == "INTERNAL"  # never sent: the client raises it


def test_unexpected_errors_are_internal_and_store_outages_unavailable() -> None:
    from node.store import StoreUnavailable

    assert _served(ValueError("boom")).code == grpc.StatusCode.INTERNAL
    assert _served(StoreUnavailable("etcd unreachable")).code == grpc.StatusCode.UNAVAILABLE


def test_a_call_etcd_refused_is_unavailable_not_internal() -> None:
    """etcd's space alarm refuses every write (RESOURCE_EXHAUSTED), and a follow watch can be
    compacted: neither is this node's bug, and INTERNAL (with a traceback per call) said so."""
    from node.store import Compacted, StoreError

    context = _served(
        StoreError("etcd at [127.0.0.1:2379] refused the request: etcdserver: mvcc: database space exceeded")
    )
    assert context.code == grpc.StatusCode.UNAVAILABLE and "database space exceeded" in context.details
    assert _served(Compacted(5)).code == grpc.StatusCode.UNAVAILABLE


def test_a_write_too_large_for_etcd_is_invalid_argument_not_try_again() -> None:
    """Before, etcd's "request is too large" was answered UNAVAILABLE "try again": no retry
    can make a write smaller."""
    from node.store.base import TooLarge

    context = _served(TooLarge(2_000_000))
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "2,000,000 bytes" in context.details and "more than etcd takes" in context.details
    assert _served(TooLarge(None)).code == grpc.StatusCode.INVALID_ARGUMENT


def test_the_client_re_exports_the_one_family() -> None:
    for name in node.wire.client.__all__:
        value = getattr(node.model.errors, name, None)
        if isinstance(value, type) and issubclass(value, ShoalError):
            assert getattr(node.wire.client, name) is value
    assert node.wire.client.NotFound is node.model.errors.NotFound
    assert node.wire.client.Conflict is node.model.errors.Conflict
