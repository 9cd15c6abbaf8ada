from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetCABundleRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCABundleResponse(_message.Message):
    __slots__ = ("ca_bundle_pem", "trust_bundle_pem", "trust_bundle_version")
    CA_BUNDLE_PEM_FIELD_NUMBER: _ClassVar[int]
    TRUST_BUNDLE_PEM_FIELD_NUMBER: _ClassVar[int]
    TRUST_BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ca_bundle_pem: str
    trust_bundle_pem: str
    trust_bundle_version: int
    def __init__(self, ca_bundle_pem: _Optional[str] = ..., trust_bundle_pem: _Optional[str] = ..., trust_bundle_version: _Optional[int] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("join_token", "csr_der")
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_DER_FIELD_NUMBER: _ClassVar[int]
    join_token: str
    csr_der: bytes
    def __init__(self, join_token: _Optional[str] = ..., csr_der: _Optional[bytes] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("certificate_der", "ca_chain_der", "name", "groups", "spiffe_id", "watch_from_seq")
    CERTIFICATE_DER_FIELD_NUMBER: _ClassVar[int]
    CA_CHAIN_DER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    WATCH_FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    certificate_der: bytes
    ca_chain_der: _containers.RepeatedScalarFieldContainer[bytes]
    name: str
    groups: _containers.RepeatedScalarFieldContainer[str]
    spiffe_id: str
    watch_from_seq: int
    def __init__(self, certificate_der: _Optional[bytes] = ..., ca_chain_der: _Optional[_Iterable[bytes]] = ..., name: _Optional[str] = ..., groups: _Optional[_Iterable[str]] = ..., spiffe_id: _Optional[str] = ..., watch_from_seq: _Optional[int] = ...) -> None: ...
