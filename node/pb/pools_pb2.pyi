from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ApplyPoolsRequest(_message.Message):
    __slots__ = ("document_json",)
    DOCUMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    document_json: str
    def __init__(self, document_json: _Optional[str] = ...) -> None: ...

class ApplyPoolsResponse(_message.Message):
    __slots__ = ("pools", "revision")
    POOLS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedScalarFieldContainer[str]
    revision: int
    def __init__(self, pools: _Optional[_Iterable[str]] = ..., revision: _Optional[int] = ...) -> None: ...

class ListPoolsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PoolInfo(_message.Message):
    __slots__ = ("name", "min", "max", "cpu", "memory", "labels", "idle_timeout", "command")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    name: str
    min: int
    max: int
    cpu: float
    memory: int
    labels: _containers.ScalarMap[str, str]
    idle_timeout: float
    command: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., min: _Optional[int] = ..., max: _Optional[int] = ..., cpu: _Optional[float] = ..., memory: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., idle_timeout: _Optional[float] = ..., command: _Optional[_Iterable[str]] = ...) -> None: ...

class PoolNodeInfo(_message.Message):
    __slots__ = ("pool", "node", "state", "requested_at", "changed_at", "provider_id", "address", "message", "registered", "dedicated", "cpu", "memory")
    POOL_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AT_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    DEDICATED_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    pool: str
    node: str
    state: str
    requested_at: float
    changed_at: float
    provider_id: str
    address: str
    message: str
    registered: bool
    dedicated: str
    cpu: float
    memory: int
    def __init__(self, pool: _Optional[str] = ..., node: _Optional[str] = ..., state: _Optional[str] = ..., requested_at: _Optional[float] = ..., changed_at: _Optional[float] = ..., provider_id: _Optional[str] = ..., address: _Optional[str] = ..., message: _Optional[str] = ..., registered: _Optional[bool] = ..., dedicated: _Optional[str] = ..., cpu: _Optional[float] = ..., memory: _Optional[int] = ...) -> None: ...

class ListPoolsResponse(_message.Message):
    __slots__ = ("pools", "nodes")
    POOLS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[PoolInfo]
    nodes: _containers.RepeatedCompositeFieldContainer[PoolNodeInfo]
    def __init__(self, pools: _Optional[_Iterable[_Union[PoolInfo, _Mapping]]] = ..., nodes: _Optional[_Iterable[_Union[PoolNodeInfo, _Mapping]]] = ...) -> None: ...
