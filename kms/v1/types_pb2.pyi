from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class AgentInfo(_message.Message):
    __slots__ = ("name", "groups", "spiffe_id", "serial", "not_before", "not_after", "status")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    name: str
    groups: _containers.RepeatedScalarFieldContainer[str]
    spiffe_id: str
    serial: str
    not_before: int
    not_after: int
    status: str
    def __init__(self, name: _Optional[str] = ..., groups: _Optional[_Iterable[str]] = ..., spiffe_id: _Optional[str] = ..., serial: _Optional[str] = ..., not_before: _Optional[int] = ..., not_after: _Optional[int] = ..., status: _Optional[str] = ...) -> None: ...
