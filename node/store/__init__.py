"""The etcd store: one small API over etcd (and an in-memory fake for unit tests).

Everything shoal keeps durable goes through `Store`. Callers never see etcd's
protobufs; they use `KV`, `Put`, `Delete` and `Compare`, and get `StoreUnavailable`
with a message naming the endpoints when etcd cannot be reached.
"""

from node.store.base import (
    KV,
    Compacted,
    Compare,
    Delete,
    Fenced,
    Put,
    Store,
    StoreError,
    StoreUnavailable,
    TxnResult,
    WatchBatch,
    WatchEvent,
    fence,
)

__all__ = [
    "KV",
    "Compacted",
    "Compare",
    "Delete",
    "Fenced",
    "Put",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TxnResult",
    "WatchBatch",
    "WatchEvent",
    "fence",
]
