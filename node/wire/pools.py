"""Calls of `shoal.v1.Pools` (issue 15) through a `ShoalClient`'s channel; kept apart so the
client module does not grow."""

from __future__ import annotations

import json
from typing import Any

import grpc

from node.pb import pools_pb2, pools_pb2_grpc
from node.wire.client import ShoalClient


def _call(client: ShoalClient, method: str, request: Any) -> Any:
    try:
        return getattr(pools_pb2_grpc.PoolsStub(client._channel), method)(request, timeout=client.timeout)
    except grpc.RpcError as err:
        raise client._error(err) from None


def apply_pools(client: ShoalClient, document: dict[str, Any]) -> pools_pb2.ApplyPoolsResponse:
    """Replace the cluster's pools with those of `document` ({"pools": {...}})."""
    return _call(client, "ApplyPools", pools_pb2.ApplyPoolsRequest(document_json=json.dumps(document)))


def list_pools(client: ShoalClient) -> pools_pb2.ListPoolsResponse:
    return _call(client, "ListPools", pools_pb2.ListPoolsRequest())
