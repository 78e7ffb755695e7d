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
    __slots__ = ("name", "version", "changed", "cause")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    changed: bool
    cause: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., changed: _Optional[bool] = ..., cause: _Optional[str] = ...) -> None: ...

class GetServiceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Port(_message.Message):
    __slots__ = ("container", "published", "protocol", "fast_path")
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    FAST_PATH_FIELD_NUMBER: _ClassVar[int]
    container: int
    published: int
    protocol: str
    fast_path: str
    def __init__(self, container: _Optional[int] = ..., published: _Optional[int] = ..., protocol: _Optional[str] = ..., fast_path: _Optional[str] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("name", "version", "image", "replicas", "running", "ports", "spec_json", "updated_at", "updated_by", "proxy_errors", "rollout", "rollback_of", "pending", "pending_reason", "update_pending", "autoscale_json")
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
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_OF_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    PENDING_REASON_FIELD_NUMBER: _ClassVar[int]
    UPDATE_PENDING_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALE_JSON_FIELD_NUMBER: _ClassVar[int]
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
    rollout: Rollout
    rollback_of: int
    pending: int
    pending_reason: str
    update_pending: bool
    autoscale_json: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., image: _Optional[str] = ..., replicas: _Optional[int] = ..., running: _Optional[int] = ..., ports: _Optional[_Iterable[_Union[Port, _Mapping]]] = ..., spec_json: _Optional[str] = ..., updated_at: _Optional[float] = ..., updated_by: _Optional[str] = ..., proxy_errors: _Optional[_Iterable[_Union[ProxyError, _Mapping]]] = ..., rollout: _Optional[_Union[Rollout, _Mapping]] = ..., rollback_of: _Optional[int] = ..., pending: _Optional[int] = ..., pending_reason: _Optional[str] = ..., update_pending: _Optional[bool] = ..., autoscale_json: _Optional[str] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("state", "from_version", "to_version", "rollback_of", "updated", "total", "batch", "failed", "message", "started_at", "updated_at")
    STATE_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_OF_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    state: str
    from_version: int
    to_version: int
    rollback_of: int
    updated: int
    total: int
    batch: _containers.RepeatedScalarFieldContainer[int]
    failed: _containers.RepeatedScalarFieldContainer[int]
    message: str
    started_at: float
    updated_at: float
    def __init__(self, state: _Optional[str] = ..., from_version: _Optional[int] = ..., to_version: _Optional[int] = ..., rollback_of: _Optional[int] = ..., updated: _Optional[int] = ..., total: _Optional[int] = ..., batch: _Optional[_Iterable[int]] = ..., failed: _Optional[_Iterable[int]] = ..., message: _Optional[str] = ..., started_at: _Optional[float] = ..., updated_at: _Optional[float] = ...) -> None: ...

class RollbackServiceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ServiceHistoryRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ServiceVersion(_message.Message):
    __slots__ = ("version", "image", "updated_at", "updated_by", "rollback_of", "outcome", "current")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_OF_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    version: int
    image: str
    updated_at: float
    updated_by: str
    rollback_of: int
    outcome: str
    current: bool
    def __init__(self, version: _Optional[int] = ..., image: _Optional[str] = ..., updated_at: _Optional[float] = ..., updated_by: _Optional[str] = ..., rollback_of: _Optional[int] = ..., outcome: _Optional[str] = ..., current: _Optional[bool] = ...) -> None: ...

class ServiceHistoryResponse(_message.Message):
    __slots__ = ("name", "versions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedCompositeFieldContainer[ServiceVersion]
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[ServiceVersion, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("name", "version", "replicas", "cause")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    replicas: int
    cause: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., replicas: _Optional[int] = ..., cause: _Optional[str] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("service", "all")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    service: str
    all: bool
    def __init__(self, service: _Optional[str] = ..., all: _Optional[bool] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("service", "slot", "task_id", "node", "desired", "state", "container_id", "endpoint", "version", "epoch", "restarts", "exit_code", "message", "updated_at", "health", "health_message", "health_failures", "health_at", "healthy_since", "terminal")
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
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    HEALTH_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FAILURES_FIELD_NUMBER: _ClassVar[int]
    HEALTH_AT_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_SINCE_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
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
    health: str
    health_message: str
    health_failures: int
    health_at: float
    healthy_since: float
    terminal: bool
    def __init__(self, service: _Optional[str] = ..., slot: _Optional[int] = ..., task_id: _Optional[str] = ..., node: _Optional[str] = ..., desired: _Optional[str] = ..., state: _Optional[str] = ..., container_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., version: _Optional[int] = ..., epoch: _Optional[int] = ..., restarts: _Optional[int] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ..., updated_at: _Optional[float] = ..., health: _Optional[str] = ..., health_message: _Optional[str] = ..., health_failures: _Optional[int] = ..., health_at: _Optional[float] = ..., healthy_since: _Optional[float] = ..., terminal: _Optional[bool] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks", "pending_slots", "pending_nodes", "pending_reason", "silent_nodes")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    PENDING_SLOTS_FIELD_NUMBER: _ClassVar[int]
    PENDING_NODES_FIELD_NUMBER: _ClassVar[int]
    PENDING_REASON_FIELD_NUMBER: _ClassVar[int]
    SILENT_NODES_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    pending_slots: _containers.RepeatedScalarFieldContainer[int]
    pending_nodes: _containers.RepeatedScalarFieldContainer[str]
    pending_reason: str
    silent_nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ..., pending_slots: _Optional[_Iterable[int]] = ..., pending_nodes: _Optional[_Iterable[str]] = ..., pending_reason: _Optional[str] = ..., silent_nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Node(_message.Message):
    __slots__ = ("id", "address", "grpc_port", "status", "leader", "labels", "cpu", "memory", "version", "tasks", "started_at", "member_state", "incarnation", "state_age", "availability", "reserved_cpu", "reserved_memory", "simulated", "own_labels", "kernel_path", "kernel_reason")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class OwnLabelsEntry(_message.Message):
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
    AVAILABILITY_FIELD_NUMBER: _ClassVar[int]
    RESERVED_CPU_FIELD_NUMBER: _ClassVar[int]
    RESERVED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELD_NUMBER: _ClassVar[int]
    OWN_LABELS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_PATH_FIELD_NUMBER: _ClassVar[int]
    KERNEL_REASON_FIELD_NUMBER: _ClassVar[int]
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
    availability: str
    reserved_cpu: float
    reserved_memory: int
    simulated: bool
    own_labels: _containers.ScalarMap[str, str]
    kernel_path: str
    kernel_reason: str
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., grpc_port: _Optional[int] = ..., status: _Optional[str] = ..., leader: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ..., cpu: _Optional[float] = ..., memory: _Optional[int] = ..., version: _Optional[str] = ..., tasks: _Optional[int] = ..., started_at: _Optional[float] = ..., member_state: _Optional[str] = ..., incarnation: _Optional[int] = ..., state_age: _Optional[float] = ..., availability: _Optional[str] = ..., reserved_cpu: _Optional[float] = ..., reserved_memory: _Optional[int] = ..., simulated: _Optional[bool] = ..., own_labels: _Optional[_Mapping[str, str]] = ..., kernel_path: _Optional[str] = ..., kernel_reason: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("name", "endpoints", "mesh", "alias", "alias_networks")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    MESH_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    ALIAS_NETWORKS_FIELD_NUMBER: _ClassVar[int]
    name: str
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    mesh: _containers.RepeatedCompositeFieldContainer[MeshAddress]
    alias: str
    alias_networks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., mesh: _Optional[_Iterable[_Union[MeshAddress, _Mapping]]] = ..., alias: _Optional[str] = ..., alias_networks: _Optional[_Iterable[str]] = ...) -> None: ...

class StreamEventsRequest(_message.Message):
    __slots__ = ("service", "follow", "limit", "since", "kind", "cause")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    service: str
    follow: bool
    limit: int
    since: float
    kind: str
    cause: str
    def __init__(self, service: _Optional[str] = ..., follow: _Optional[bool] = ..., limit: _Optional[int] = ..., since: _Optional[float] = ..., kind: _Optional[str] = ..., cause: _Optional[str] = ...) -> None: ...

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

class TokenInfo(_message.Message):
    __slots__ = ("id", "role", "description", "created", "expires", "revoked")
    ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    id: str
    role: str
    description: str
    created: str
    expires: str
    revoked: str
    def __init__(self, id: _Optional[str] = ..., role: _Optional[str] = ..., description: _Optional[str] = ..., created: _Optional[str] = ..., expires: _Optional[str] = ..., revoked: _Optional[str] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("role", "description", "expires_in", "csr")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
    CSR_FIELD_NUMBER: _ClassVar[int]
    role: str
    description: str
    expires_in: int
    csr: bytes
    def __init__(self, role: _Optional[str] = ..., description: _Optional[str] = ..., expires_in: _Optional[int] = ..., csr: _Optional[bytes] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token", "info", "client_certificate", "ca_certificate")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    token: str
    info: TokenInfo
    client_certificate: bytes
    ca_certificate: bytes
    def __init__(self, token: _Optional[str] = ..., info: _Optional[_Union[TokenInfo, _Mapping]] = ..., client_certificate: _Optional[bytes] = ..., ca_certificate: _Optional[bytes] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenInfo]
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenInfo, _Mapping]]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RevokeTokenResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: TokenInfo
    def __init__(self, info: _Optional[_Union[TokenInfo, _Mapping]] = ...) -> None: ...

class RotateJoinTokenRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetJoinTokenRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JoinTokenResponse(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class SetNodeAvailabilityRequest(_message.Message):
    __slots__ = ("node", "availability")
    NODE_FIELD_NUMBER: _ClassVar[int]
    AVAILABILITY_FIELD_NUMBER: _ClassVar[int]
    node: str
    availability: str
    def __init__(self, node: _Optional[str] = ..., availability: _Optional[str] = ...) -> None: ...

class LabelNodeRequest(_message.Message):
    __slots__ = ("node", "set", "remove")
    class SetEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    node: str
    set: _containers.ScalarMap[str, str]
    remove: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node: _Optional[str] = ..., set: _Optional[_Mapping[str, str]] = ..., remove: _Optional[_Iterable[str]] = ...) -> None: ...

class UpdateNodeResponse(_message.Message):
    __slots__ = ("node", "availability", "labels", "changed")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_FIELD_NUMBER: _ClassVar[int]
    AVAILABILITY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    node: str
    availability: str
    labels: _containers.ScalarMap[str, str]
    changed: bool
    def __init__(self, node: _Optional[str] = ..., availability: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., changed: _Optional[bool] = ...) -> None: ...

class LogsRequest(_message.Message):
    __slots__ = ("service", "task", "follow", "tail", "since", "slot", "previous")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    service: str
    task: str
    follow: bool
    tail: int
    since: float
    slot: int
    previous: int
    def __init__(self, service: _Optional[str] = ..., task: _Optional[str] = ..., follow: _Optional[bool] = ..., tail: _Optional[int] = ..., since: _Optional[float] = ..., slot: _Optional[int] = ..., previous: _Optional[int] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("task", "service", "slot", "node", "time_ns", "stream", "text", "notice")
    TASK_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    task: str
    service: str
    slot: int
    node: str
    time_ns: int
    stream: str
    text: bytes
    notice: str
    def __init__(self, task: _Optional[str] = ..., service: _Optional[str] = ..., slot: _Optional[int] = ..., node: _Optional[str] = ..., time_ns: _Optional[int] = ..., stream: _Optional[str] = ..., text: _Optional[bytes] = ..., notice: _Optional[str] = ...) -> None: ...

class LogBatch(_message.Message):
    __slots__ = ("lines",)
    LINES_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[LogLine]
    def __init__(self, lines: _Optional[_Iterable[_Union[LogLine, _Mapping]]] = ...) -> None: ...

class ExecStart(_message.Message):
    __slots__ = ("target", "command", "tty", "stdin", "width", "height", "task", "user")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    TTY_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    target: str
    command: _containers.RepeatedScalarFieldContainer[str]
    tty: bool
    stdin: bool
    width: int
    height: int
    task: str
    user: str
    def __init__(self, target: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., tty: _Optional[bool] = ..., stdin: _Optional[bool] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., task: _Optional[str] = ..., user: _Optional[str] = ...) -> None: ...

class ExecInput(_message.Message):
    __slots__ = ("start", "stdin", "stdin_eof", "width", "height")
    START_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    STDIN_EOF_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    start: ExecStart
    stdin: bytes
    stdin_eof: bool
    width: int
    height: int
    def __init__(self, start: _Optional[_Union[ExecStart, _Mapping]] = ..., stdin: _Optional[bytes] = ..., stdin_eof: _Optional[bool] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class ExecOutput(_message.Message):
    __slots__ = ("stdout", "stderr", "exited", "exit_code", "task", "node")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXITED_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    stdout: bytes
    stderr: bytes
    exited: bool
    exit_code: int
    task: str
    node: str
    def __init__(self, stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., exited: _Optional[bool] = ..., exit_code: _Optional[int] = ..., task: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class BackupRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BackupChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class DeployStackRequest(_message.Message):
    __slots__ = ("name", "spec", "source", "objects")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: str
    source: str
    objects: _containers.RepeatedCompositeFieldContainer[StackObject]
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[str] = ..., source: _Optional[str] = ..., objects: _Optional[_Iterable[_Union[StackObject, _Mapping]]] = ...) -> None: ...

class StackObject(_message.Message):
    __slots__ = ("kind", "name", "value")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    value: bytes
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class StackObjectChange(_message.Message):
    __slots__ = ("kind", "name", "action", "size", "revision")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    action: str
    size: int
    revision: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., action: _Optional[str] = ..., size: _Optional[int] = ..., revision: _Optional[str] = ...) -> None: ...

class StackChange(_message.Message):
    __slots__ = ("service", "version", "action")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    service: str
    version: int
    action: str
    def __init__(self, service: _Optional[str] = ..., version: _Optional[int] = ..., action: _Optional[str] = ...) -> None: ...

class DeployStackResponse(_message.Message):
    __slots__ = ("name", "changes", "cause", "objects")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    changes: _containers.RepeatedCompositeFieldContainer[StackChange]
    cause: str
    objects: _containers.RepeatedCompositeFieldContainer[StackObjectChange]
    def __init__(self, name: _Optional[str] = ..., changes: _Optional[_Iterable[_Union[StackChange, _Mapping]]] = ..., cause: _Optional[str] = ..., objects: _Optional[_Iterable[_Union[StackObjectChange, _Mapping]]] = ...) -> None: ...

class RemoveStackRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemoveStackResponse(_message.Message):
    __slots__ = ("name", "services", "objects")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    services: _containers.RepeatedScalarFieldContainer[str]
    objects: _containers.RepeatedCompositeFieldContainer[StackObjectChange]
    def __init__(self, name: _Optional[str] = ..., services: _Optional[_Iterable[str]] = ..., objects: _Optional[_Iterable[_Union[StackObjectChange, _Mapping]]] = ...) -> None: ...

class ListStacksRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Stack(_message.Message):
    __slots__ = ("name", "services")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    name: str
    services: _containers.RepeatedCompositeFieldContainer[Service]
    def __init__(self, name: _Optional[str] = ..., services: _Optional[_Iterable[_Union[Service, _Mapping]]] = ...) -> None: ...

class ListStacksResponse(_message.Message):
    __slots__ = ("stacks",)
    STACKS_FIELD_NUMBER: _ClassVar[int]
    stacks: _containers.RepeatedCompositeFieldContainer[Stack]
    def __init__(self, stacks: _Optional[_Iterable[_Union[Stack, _Mapping]]] = ...) -> None: ...

class UsageRequest(_message.Message):
    __slots__ = ("service", "history")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    service: str
    history: bool
    def __init__(self, service: _Optional[str] = ..., history: _Optional[bool] = ...) -> None: ...

class UsagePoint(_message.Message):
    __slots__ = ("at", "cpu_percent", "memory_bytes")
    AT_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    at: float
    cpu_percent: float
    memory_bytes: int
    def __init__(self, at: _Optional[float] = ..., cpu_percent: _Optional[float] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class TaskUsage(_message.Message):
    __slots__ = ("task_id", "service", "slot", "node", "cpu_percent", "memory_bytes", "memory_limit", "rx_bytes", "tx_bytes", "block_read", "block_write", "restarts", "at", "history")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_READ_FIELD_NUMBER: _ClassVar[int]
    BLOCK_WRITE_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    service: str
    slot: int
    node: str
    cpu_percent: float
    memory_bytes: int
    memory_limit: int
    rx_bytes: int
    tx_bytes: int
    block_read: int
    block_write: int
    restarts: int
    at: float
    history: _containers.RepeatedCompositeFieldContainer[UsagePoint]
    def __init__(self, task_id: _Optional[str] = ..., service: _Optional[str] = ..., slot: _Optional[int] = ..., node: _Optional[str] = ..., cpu_percent: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., memory_limit: _Optional[int] = ..., rx_bytes: _Optional[int] = ..., tx_bytes: _Optional[int] = ..., block_read: _Optional[int] = ..., block_write: _Optional[int] = ..., restarts: _Optional[int] = ..., at: _Optional[float] = ..., history: _Optional[_Iterable[_Union[UsagePoint, _Mapping]]] = ...) -> None: ...

class UsageResponse(_message.Message):
    __slots__ = ("tasks", "notices")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NOTICES_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskUsage]
    notices: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskUsage, _Mapping]]] = ..., notices: _Optional[_Iterable[str]] = ...) -> None: ...

class UsageReportRequest(_message.Message):
    __slots__ = ("since", "until", "by")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    since: float
    until: float
    by: str
    def __init__(self, since: _Optional[float] = ..., until: _Optional[float] = ..., by: _Optional[str] = ...) -> None: ...

class UsageRow(_message.Message):
    __slots__ = ("key", "vcpu_hours_reserved", "vcpu_hours_used", "gib_hours_reserved", "gib_hours_used", "node_hours", "cost", "node_cost")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VCPU_HOURS_RESERVED_FIELD_NUMBER: _ClassVar[int]
    VCPU_HOURS_USED_FIELD_NUMBER: _ClassVar[int]
    GIB_HOURS_RESERVED_FIELD_NUMBER: _ClassVar[int]
    GIB_HOURS_USED_FIELD_NUMBER: _ClassVar[int]
    NODE_HOURS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    NODE_COST_FIELD_NUMBER: _ClassVar[int]
    key: str
    vcpu_hours_reserved: float
    vcpu_hours_used: float
    gib_hours_reserved: float
    gib_hours_used: float
    node_hours: float
    cost: float
    node_cost: float
    def __init__(self, key: _Optional[str] = ..., vcpu_hours_reserved: _Optional[float] = ..., vcpu_hours_used: _Optional[float] = ..., gib_hours_reserved: _Optional[float] = ..., gib_hours_used: _Optional[float] = ..., node_hours: _Optional[float] = ..., cost: _Optional[float] = ..., node_cost: _Optional[float] = ...) -> None: ...

class UsageRates(_message.Message):
    __slots__ = ("vcpu_hour", "gib_hour", "node_hour", "currency", "set")
    VCPU_HOUR_FIELD_NUMBER: _ClassVar[int]
    GIB_HOUR_FIELD_NUMBER: _ClassVar[int]
    NODE_HOUR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    vcpu_hour: float
    gib_hour: float
    node_hour: float
    currency: str
    set: bool
    def __init__(self, vcpu_hour: _Optional[float] = ..., gib_hour: _Optional[float] = ..., node_hour: _Optional[float] = ..., currency: _Optional[str] = ..., set: _Optional[bool] = ...) -> None: ...

class UsageReportResponse(_message.Message):
    __slots__ = ("rows", "total", "rates", "since", "until", "by", "interval_records", "day_records")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    RATES_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_RECORDS_FIELD_NUMBER: _ClassVar[int]
    DAY_RECORDS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[UsageRow]
    total: UsageRow
    rates: UsageRates
    since: float
    until: float
    by: str
    interval_records: int
    day_records: int
    def __init__(self, rows: _Optional[_Iterable[_Union[UsageRow, _Mapping]]] = ..., total: _Optional[_Union[UsageRow, _Mapping]] = ..., rates: _Optional[_Union[UsageRates, _Mapping]] = ..., since: _Optional[float] = ..., until: _Optional[float] = ..., by: _Optional[str] = ..., interval_records: _Optional[int] = ..., day_records: _Optional[int] = ...) -> None: ...

class SetUsageRatesRequest(_message.Message):
    __slots__ = ("rates",)
    RATES_FIELD_NUMBER: _ClassVar[int]
    rates: UsageRates
    def __init__(self, rates: _Optional[_Union[UsageRates, _Mapping]] = ...) -> None: ...
