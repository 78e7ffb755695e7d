from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ObjectInfo(_message.Message):
    __slots__ = ("kind", "name", "revision", "version", "size", "created", "updated", "services", "stack")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    STACK_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    revision: str
    version: int
    size: int
    created: str
    updated: str
    services: _containers.RepeatedScalarFieldContainer[str]
    stack: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., revision: _Optional[str] = ..., version: _Optional[int] = ..., size: _Optional[int] = ..., created: _Optional[str] = ..., updated: _Optional[str] = ..., services: _Optional[_Iterable[str]] = ..., stack: _Optional[str] = ...) -> None: ...

class PutObjectRequest(_message.Message):
    __slots__ = ("kind", "name", "value", "update")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    value: bytes
    update: bool
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., value: _Optional[bytes] = ..., update: _Optional[bool] = ...) -> None: ...

class PutObjectResponse(_message.Message):
    __slots__ = ("info", "rolled", "changed")
    INFO_FIELD_NUMBER: _ClassVar[int]
    ROLLED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    info: ObjectInfo
    rolled: _containers.RepeatedScalarFieldContainer[str]
    changed: bool
    def __init__(self, info: _Optional[_Union[ObjectInfo, _Mapping]] = ..., rolled: _Optional[_Iterable[str]] = ..., changed: _Optional[bool] = ...) -> None: ...

class ListObjectsRequest(_message.Message):
    __slots__ = ("kind",)
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: str
    def __init__(self, kind: _Optional[str] = ...) -> None: ...

class ListObjectsResponse(_message.Message):
    __slots__ = ("objects",)
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[ObjectInfo]
    def __init__(self, objects: _Optional[_Iterable[_Union[ObjectInfo, _Mapping]]] = ...) -> None: ...

class RemoveObjectRequest(_message.Message):
    __slots__ = ("kind", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class RemoveObjectResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
