from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
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

class ListGrantedKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GrantedKey(_message.Message):
    __slots__ = ("name", "key_type", "current_version", "versions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    key_type: str
    current_version: int
    versions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., key_type: _Optional[str] = ..., current_version: _Optional[int] = ..., versions: _Optional[_Iterable[int]] = ...) -> None: ...

class ListGrantedKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[GrantedKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[GrantedKey, _Mapping]]] = ...) -> None: ...

class FetchKeyRequest(_message.Message):
    __slots__ = ("name", "version", "purpose", "key_pair")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    KEY_PAIR_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    purpose: FetchPurpose
    key_pair: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., purpose: _Optional[_Union[FetchPurpose, str]] = ..., key_pair: _Optional[bool] = ...) -> None: ...

class FetchKeyResponse(_message.Message):
    __slots__ = ("name", "version", "state", "created_at", "wrapped_key", "wrapped_for_serial", "key_type", "wrapped_private_key")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_FOR_SERIAL_FIELD_NUMBER: _ClassVar[int]
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_PRIVATE_KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    state: str
    created_at: int
    wrapped_key: bytes
    wrapped_for_serial: str
    key_type: str
    wrapped_private_key: bytes
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[str] = ..., created_at: _Optional[int] = ..., wrapped_key: _Optional[bytes] = ..., wrapped_for_serial: _Optional[str] = ..., key_type: _Optional[str] = ..., wrapped_private_key: _Optional[bytes] = ...) -> None: ...

class GetPublicKeyRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetPublicKeyResponse(_message.Message):
    __slots__ = ("name", "version", "key_type", "state", "public_key", "created_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    key_type: str
    state: str
    public_key: bytes
    created_at: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., key_type: _Optional[str] = ..., state: _Optional[str] = ..., public_key: _Optional[bytes] = ..., created_at: _Optional[int] = ...) -> None: ...
