from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VolumeInfo(_message.Message):
    __slots__ = ("name", "service", "slot", "volume", "node", "docker_name", "in_use", "removing", "since")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    DOCKER_NAME_FIELD_NUMBER: _ClassVar[int]
    IN_USE_FIELD_NUMBER: _ClassVar[int]
    REMOVING_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    service: str
    slot: int
    volume: str
    node: str
    docker_name: str
    in_use: bool
    removing: bool
    since: float
    def __init__(self, name: _Optional[str] = ..., service: _Optional[str] = ..., slot: _Optional[int] = ..., volume: _Optional[str] = ..., node: _Optional[str] = ..., docker_name: _Optional[str] = ..., in_use: _Optional[bool] = ..., removing: _Optional[bool] = ..., since: _Optional[float] = ...) -> None: ...

class ListVolumesRequest(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: str
    def __init__(self, service: _Optional[str] = ...) -> None: ...

class ListVolumesResponse(_message.Message):
    __slots__ = ("volumes",)
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    volumes: _containers.RepeatedCompositeFieldContainer[VolumeInfo]
    def __init__(self, volumes: _Optional[_Iterable[_Union[VolumeInfo, _Mapping]]] = ...) -> None: ...

class RemoveVolumeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemoveVolumeResponse(_message.Message):
    __slots__ = ("volume", "message")
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    volume: VolumeInfo
    message: str
    def __init__(self, volume: _Optional[_Union[VolumeInfo, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...
