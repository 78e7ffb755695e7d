from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ApplyServiceRequest(_message.Message):
    __slots__ = ("spec", "source")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    spec: str
    source: str
    def __init__(self, spec: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class ApplyServiceResponse(_message.Message):
    __slots__ = ("name", "version", "changed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    changed: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., changed: _Optional[bool] = ...) -> None: ...

class GetServiceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Port(_message.Message):
    __slots__ = ("container", "published", "protocol")
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    container: int
    published: int
    protocol: str
    def __init__(self, container: _Optional[int] = ..., published: _Optional[int] = ..., protocol: _Optional[str] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("name", "version", "image", "replicas", "running", "ports", "spec_json", "updated_at", "updated_by", "proxy_errors")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    PROXY_ERRORS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    image: str
    replicas: int
    running: int
    ports: _containers.RepeatedCompositeFieldContainer[Port]
    spec_json: str
    updated_at: float
    updated_by: str
    proxy_errors: _containers.RepeatedCompositeFieldContainer[ProxyError]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., image: _Optional[str] = ..., replicas: _Optional[int] = ..., running: _Optional[int] = ..., ports: _Optional[_Iterable[_Union[Port, _Mapping]]] = ..., spec_json: _Optional[str] = ..., updated_at: _Optional[float] = ..., updated_by: _Optional[str] = ..., proxy_errors: _Optional[_Iterable[_Union[ProxyError, _Mapping]]] = ...) -> None: ...

class ProxyError(_message.Message):
    __slots__ = ("node", "port", "error", "since")
    NODE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    node: str
    port: int
    error: str
    since: float
    def __init__(self, node: _Optional[str] = ..., port: _Optional[int] = ..., error: _Optional[str] = ..., since: _Optional[float] = ...) -> None: ...

class ListServicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListServicesResponse(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[Service]
    def __init__(self, services: _Optional[_Iterable[_Union[Service, _Mapping]]] = ...) -> None: ...

class DeleteServiceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteServiceResponse(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ScaleServiceRequest(_message.Message):
    __slots__ = ("name", "replicas")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    replicas: int
    def __init__(self, name: _Optional[str] = ..., replicas: _Optional[int] = ...) -> None: ...

class ScaleServiceResponse(_message.Message):
    __slots__ = ("name", "version", "replicas")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    replicas: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., replicas: _Optional[int] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: str
    def __init__(self, service: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("service", "slot", "task_id", "node", "desired", "state", "container_id", "endpoint", "version", "epoch", "restarts", "exit_code", "message", "updated_at")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    service: str
    slot: int
    task_id: str
    node: str
    desired: str
    state: str
    container_id: str
    endpoint: str
    version: int
    epoch: int
    restarts: int
    exit_code: int
    message: str
    updated_at: float
    def __init__(self, service: _Optional[str] = ..., slot: _Optional[int] = ..., task_id: _Optional[str] = ..., node: _Optional[str] = ..., desired: _Optional[str] = ..., state: _Optional[str] = ..., container_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., version: _Optional[int] = ..., epoch: _Optional[int] = ..., restarts: _Optional[int] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ..., updated_at: _Optional[float] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Node(_message.Message):
    __slots__ = ("id", "address", "grpc_port", "status", "leader", "labels", "cpu", "memory", "version", "tasks", "started_at", "member_state", "incarnation", "state_age")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GRPC_PORT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    MEMBER_STATE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    STATE_AGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    grpc_port: int
    status: str
    leader: bool
    labels: _containers.ScalarMap[str, str]
    cpu: float
    memory: int
    version: str
    tasks: int
    started_at: float
    member_state: str
    incarnation: int
    state_age: float
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., grpc_port: _Optional[int] = ..., status: _Optional[str] = ..., leader: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ..., cpu: _Optional[float] = ..., memory: _Optional[int] = ..., version: _Optional[str] = ..., tasks: _Optional[int] = ..., started_at: _Optional[float] = ..., member_state: _Optional[str] = ..., incarnation: _Optional[int] = ..., state_age: _Optional[float] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes", "epoch")
    NODES_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    epoch: int
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., epoch: _Optional[int] = ...) -> None: ...

class WatchMembersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Member(_message.Message):
    __slots__ = ("node", "address", "state", "incarnation", "previous", "time", "state_age")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_AGE_FIELD_NUMBER: _ClassVar[int]
    node: str
    address: str
    state: str
    incarnation: int
    previous: str
    time: float
    state_age: float
    def __init__(self, node: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[str] = ..., incarnation: _Optional[int] = ..., previous: _Optional[str] = ..., time: _Optional[float] = ..., state_age: _Optional[float] = ...) -> None: ...

class ResolveRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("task", "node", "address", "port", "container_port")
    TASK_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_PORT_FIELD_NUMBER: _ClassVar[int]
    task: str
    node: str
    address: str
    port: int
    container_port: int
    def __init__(self, task: _Optional[str] = ..., node: _Optional[str] = ..., address: _Optional[str] = ..., port: _Optional[int] = ..., container_port: _Optional[int] = ...) -> None: ...

class MeshAddress(_message.Message):
    __slots__ = ("node", "address", "port", "protocol")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    node: str
    address: str
    port: int
    protocol: str
    def __init__(self, node: _Optional[str] = ..., address: _Optional[str] = ..., port: _Optional[int] = ..., protocol: _Optional[str] = ...) -> None: ...

class ResolveResponse(_message.Message):
    __slots__ = ("name", "endpoints", "mesh")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    MESH_FIELD_NUMBER: _ClassVar[int]
    name: str
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    mesh: _containers.RepeatedCompositeFieldContainer[MeshAddress]
    def __init__(self, name: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., mesh: _Optional[_Iterable[_Union[MeshAddress, _Mapping]]] = ...) -> None: ...

class StreamEventsRequest(_message.Message):
    __slots__ = ("service", "follow", "limit")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    service: str
    follow: bool
    limit: int
    def __init__(self, service: _Optional[str] = ..., follow: _Optional[bool] = ..., limit: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("time", "kind", "node", "service", "task", "message", "cause")
    TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    time: float
    kind: str
    node: str
    service: str
    task: str
    message: str
    cause: str
    def __init__(self, time: _Optional[float] = ..., kind: _Optional[str] = ..., node: _Optional[str] = ..., service: _Optional[str] = ..., task: _Optional[str] = ..., message: _Optional[str] = ..., cause: _Optional[str] = ...) -> None: ...
