from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobIndex(_message.Message):
    __slots__ = ("index", "state", "attempts", "task_id", "node", "exit_code", "retry_at", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    state: str
    attempts: int
    task_id: str
    node: str
    exit_code: int
    retry_at: float
    message: str
    def __init__(self, index: _Optional[int] = ..., state: _Optional[str] = ..., attempts: _Optional[int] = ..., task_id: _Optional[str] = ..., node: _Optional[str] = ..., exit_code: _Optional[int] = ..., retry_at: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class JobInfo(_message.Message):
    __slots__ = ("name", "state", "completions", "parallelism", "retries", "failures", "succeeded", "running", "started_at", "finished_at", "message", "indexes", "version", "schedule", "next_tick")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    PARALLELISM_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    NEXT_TICK_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    completions: int
    parallelism: int
    retries: int
    failures: int
    succeeded: int
    running: int
    started_at: float
    finished_at: float
    message: str
    indexes: _containers.RepeatedCompositeFieldContainer[JobIndex]
    version: int
    schedule: str
    next_tick: float
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., completions: _Optional[int] = ..., parallelism: _Optional[int] = ..., retries: _Optional[int] = ..., failures: _Optional[int] = ..., succeeded: _Optional[int] = ..., running: _Optional[int] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., message: _Optional[str] = ..., indexes: _Optional[_Iterable[_Union[JobIndex, _Mapping]]] = ..., version: _Optional[int] = ..., schedule: _Optional[str] = ..., next_tick: _Optional[float] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobInfo]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobInfo, _Mapping]]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class JobRun(_message.Message):
    __slots__ = ("tick", "outcome", "fired_at", "finished_at", "message", "task_ids")
    TICK_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    FIRED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    tick: float
    outcome: str
    fired_at: float
    finished_at: float
    message: str
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tick: _Optional[float] = ..., outcome: _Optional[str] = ..., fired_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., message: _Optional[str] = ..., task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[JobRun]
    def __init__(self, runs: _Optional[_Iterable[_Union[JobRun, _Mapping]]] = ...) -> None: ...
