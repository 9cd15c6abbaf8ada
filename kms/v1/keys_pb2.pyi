from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FetchPurpose(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FETCH_PURPOSE_UNSPECIFIED: _ClassVar[FetchPurpose]
    FETCH_PURPOSE_ENCRYPT: _ClassVar[FetchPurpose]
    FETCH_PURPOSE_DECRYPT: _ClassVar[FetchPurpose]
FETCH_PURPOSE_UNSPECIFIED: FetchPurpose
FETCH_PURPOSE_ENCRYPT: FetchPurpose
FETCH_PURPOSE_DECRYPT: FetchPurpose

class FetchKeyRequest(_message.Message):
    __slots__ = ("name", "version", "purpose")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    purpose: FetchPurpose
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., purpose: _Optional[_Union[FetchPurpose, str]] = ...) -> None: ...

class FetchKeyResponse(_message.Message):
    __slots__ = ("name", "version", "state", "created_at", "wrapped_key", "wrapped_for_serial")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_FOR_SERIAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    state: str
    created_at: int
    wrapped_key: bytes
    wrapped_for_serial: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[str] = ..., created_at: _Optional[int] = ..., wrapped_key: _Optional[bytes] = ..., wrapped_for_serial: _Optional[str] = ...) -> None: ...
