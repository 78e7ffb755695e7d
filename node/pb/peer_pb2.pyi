from node.pb import api_pb2 as _api_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MemberUpdate(_message.Message):
    __slots__ = ("node", "address", "incarnation", "state", "source", "proof")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    node: str
    address: str
    incarnation: int
    state: str
    source: str
    proof: bytes
    def __init__(self, node: _Optional[str] = ..., address: _Optional[str] = ..., incarnation: _Optional[int] = ..., state: _Optional[str] = ..., source: _Optional[str] = ..., proof: _Optional[bytes] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ("from_node", "seq", "updates")
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    from_node: str
    seq: int
    updates: _containers.RepeatedCompositeFieldContainer[MemberUpdate]
    def __init__(self, from_node: _Optional[str] = ..., seq: _Optional[int] = ..., updates: _Optional[_Iterable[_Union[MemberUpdate, _Mapping]]] = ...) -> None: ...

class PingResponse(_message.Message):
    __slots__ = ("node", "seq", "incarnation", "ack", "updates")
    NODE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    node: str
    seq: int
    incarnation: int
    ack: bool
    updates: _containers.RepeatedCompositeFieldContainer[MemberUpdate]
    def __init__(self, node: _Optional[str] = ..., seq: _Optional[int] = ..., incarnation: _Optional[int] = ..., ack: _Optional[bool] = ..., updates: _Optional[_Iterable[_Union[MemberUpdate, _Mapping]]] = ...) -> None: ...

class PingReqRequest(_message.Message):
    __slots__ = ("from_node", "seq", "target_node", "target_address", "updates")
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TARGET_NODE_FIELD_NUMBER: _ClassVar[int]
    TARGET_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    from_node: str
    seq: int
    target_node: str
    target_address: str
    updates: _containers.RepeatedCompositeFieldContainer[MemberUpdate]
    def __init__(self, from_node: _Optional[str] = ..., seq: _Optional[int] = ..., target_node: _Optional[str] = ..., target_address: _Optional[str] = ..., updates: _Optional[_Iterable[_Union[MemberUpdate, _Mapping]]] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("csr", "addresses", "dns_names")
    CSR_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    DNS_NAMES_FIELD_NUMBER: _ClassVar[int]
    csr: bytes
    addresses: _containers.RepeatedScalarFieldContainer[str]
    dns_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, csr: _Optional[bytes] = ..., addresses: _Optional[_Iterable[str]] = ..., dns_names: _Optional[_Iterable[str]] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("certificate", "ca_certificate", "ca_passphrase", "member")
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    CA_PASSPHRASE_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    certificate: bytes
    ca_certificate: bytes
    ca_passphrase: bytes
    member: str
    def __init__(self, certificate: _Optional[bytes] = ..., ca_certificate: _Optional[bytes] = ..., ca_passphrase: _Optional[bytes] = ..., member: _Optional[str] = ...) -> None: ...

class TrafficRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TrafficPoint(_message.Message):
    __slots__ = ("at", "span", "requests", "errors", "latency_count", "latency_sum")
    AT_FIELD_NUMBER: _ClassVar[int]
    SPAN_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_COUNT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SUM_FIELD_NUMBER: _ClassVar[int]
    at: float
    span: float
    requests: int
    errors: int
    latency_count: int
    latency_sum: float
    def __init__(self, at: _Optional[float] = ..., span: _Optional[float] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., latency_count: _Optional[int] = ..., latency_sum: _Optional[float] = ...) -> None: ...

class TrafficSeries(_message.Message):
    __slots__ = ("service", "points")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    service: str
    points: _containers.RepeatedCompositeFieldContainer[TrafficPoint]
    def __init__(self, service: _Optional[str] = ..., points: _Optional[_Iterable[_Union[TrafficPoint, _Mapping]]] = ...) -> None: ...

class TrafficResponse(_message.Message):
    __slots__ = ("node", "series")
    NODE_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    node: str
    series: _containers.RepeatedCompositeFieldContainer[TrafficSeries]
    def __init__(self, node: _Optional[str] = ..., series: _Optional[_Iterable[_Union[TrafficSeries, _Mapping]]] = ...) -> None: ...

class FindTasksRequest(_message.Message):
    __slots__ = ("task", "service")
    TASK_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    task: str
    service: str
    def __init__(self, task: _Optional[str] = ..., service: _Optional[str] = ...) -> None: ...

class FoundTask(_message.Message):
    __slots__ = ("task", "service", "slot", "state", "container", "status", "created", "uid")
    TASK_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    task: str
    service: str
    slot: int
    state: str
    container: str
    status: str
    created: float
    uid: str
    def __init__(self, task: _Optional[str] = ..., service: _Optional[str] = ..., slot: _Optional[int] = ..., state: _Optional[str] = ..., container: _Optional[str] = ..., status: _Optional[str] = ..., created: _Optional[float] = ..., uid: _Optional[str] = ...) -> None: ...

class FindTasksResponse(_message.Message):
    __slots__ = ("node", "tasks", "truncated")
    NODE_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    node: str
    tasks: _containers.RepeatedCompositeFieldContainer[FoundTask]
    truncated: bool
    def __init__(self, node: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[FoundTask, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...
