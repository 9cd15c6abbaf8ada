from kms.v1 import revocation_pb2 as _revocation_pb2
from kms.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateJoinTokenRequest(_message.Message):
    __slots__ = ("name", "groups", "ttl_seconds", "allow_reenroll", "replace")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_REENROLL_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    groups: _containers.RepeatedScalarFieldContainer[str]
    ttl_seconds: int
    allow_reenroll: bool
    replace: bool
    def __init__(self, name: _Optional[str] = ..., groups: _Optional[_Iterable[str]] = ..., ttl_seconds: _Optional[int] = ..., allow_reenroll: _Optional[bool] = ..., replace: _Optional[bool] = ...) -> None: ...

class CreateJoinTokenResponse(_message.Message):
    __slots__ = ("token", "token_id", "name", "groups", "expires_at")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    token: str
    token_id: str
    name: str
    groups: _containers.RepeatedScalarFieldContainer[str]
    expires_at: int
    def __init__(self, token: _Optional[str] = ..., token_id: _Optional[str] = ..., name: _Optional[str] = ..., groups: _Optional[_Iterable[str]] = ..., expires_at: _Optional[int] = ...) -> None: ...

class GetCARequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCAResponse(_message.Message):
    __slots__ = ("certificate_pem", "fingerprint", "trust_domain")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: str
    fingerprint: str
    trust_domain: str
    def __init__(self, certificate_pem: _Optional[str] = ..., fingerprint: _Optional[str] = ..., trust_domain: _Optional[str] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[_types_pb2.AgentInfo]
    def __init__(self, agents: _Optional[_Iterable[_Union[_types_pb2.AgentInfo, _Mapping]]] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("name", "grants", "allow_unknown_grantee", "expires_at", "rotate_every", "key_type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_UNKNOWN_GRANTEE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ROTATE_EVERY_FIELD_NUMBER: _ClassVar[int]
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    grants: _containers.RepeatedScalarFieldContainer[str]
    allow_unknown_grantee: bool
    expires_at: int
    rotate_every: int
    key_type: str
    def __init__(self, name: _Optional[str] = ..., grants: _Optional[_Iterable[str]] = ..., allow_unknown_grantee: _Optional[bool] = ..., expires_at: _Optional[int] = ..., rotate_every: _Optional[int] = ..., key_type: _Optional[str] = ...) -> None: ...

class RotateKeyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GrantKeyRequest(_message.Message):
    __slots__ = ("name", "grant", "allow_unknown_grantee")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    ALLOW_UNKNOWN_GRANTEE_FIELD_NUMBER: _ClassVar[int]
    name: str
    grant: str
    allow_unknown_grantee: bool
    def __init__(self, name: _Optional[str] = ..., grant: _Optional[str] = ..., allow_unknown_grantee: _Optional[bool] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyInfo]
    def __init__(self, keys: _Optional[_Iterable[_Union[KeyInfo, _Mapping]]] = ...) -> None: ...

class DestroyKeyVersionRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class KeyVersionInfo(_message.Message):
    __slots__ = ("version", "state", "created_at", "state_changed_at", "activated_at", "deactivated_at")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTIVATED_AT_FIELD_NUMBER: _ClassVar[int]
    DEACTIVATED_AT_FIELD_NUMBER: _ClassVar[int]
    version: int
    state: str
    created_at: int
    state_changed_at: int
    activated_at: int
    deactivated_at: int
    def __init__(self, version: _Optional[int] = ..., state: _Optional[str] = ..., created_at: _Optional[int] = ..., state_changed_at: _Optional[int] = ..., activated_at: _Optional[int] = ..., deactivated_at: _Optional[int] = ...) -> None: ...

class KeyInfo(_message.Message):
    __slots__ = ("name", "current_version", "created_at", "versions", "grants", "warnings", "disabled", "disabled_at", "disabled_reason", "expires_at", "rotate_every", "rotation_due_at", "key_type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    DISABLED_AT_FIELD_NUMBER: _ClassVar[int]
    DISABLED_REASON_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ROTATE_EVERY_FIELD_NUMBER: _ClassVar[int]
    ROTATION_DUE_AT_FIELD_NUMBER: _ClassVar[int]
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    current_version: int
    created_at: int
    versions: _containers.RepeatedCompositeFieldContainer[KeyVersionInfo]
    grants: _containers.RepeatedScalarFieldContainer[str]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    disabled: bool
    disabled_at: int
    disabled_reason: str
    expires_at: int
    rotate_every: int
    rotation_due_at: int
    key_type: str
    def __init__(self, name: _Optional[str] = ..., current_version: _Optional[int] = ..., created_at: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[KeyVersionInfo, _Mapping]]] = ..., grants: _Optional[_Iterable[str]] = ..., warnings: _Optional[_Iterable[str]] = ..., disabled: _Optional[bool] = ..., disabled_at: _Optional[int] = ..., disabled_reason: _Optional[str] = ..., expires_at: _Optional[int] = ..., rotate_every: _Optional[int] = ..., rotation_due_at: _Optional[int] = ..., key_type: _Optional[str] = ...) -> None: ...

class DisableKeyRequest(_message.Message):
    __slots__ = ("name", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class EnableKeyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class KeyStateResponse(_message.Message):
    __slots__ = ("key", "changed")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    key: KeyInfo
    changed: bool
    def __init__(self, key: _Optional[_Union[KeyInfo, _Mapping]] = ..., changed: _Optional[bool] = ...) -> None: ...

class RevokeCertificateRequest(_message.Message):
    __slots__ = ("serial", "reason")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    serial: str
    reason: str
    def __init__(self, serial: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeAgentRequest(_message.Message):
    __slots__ = ("name", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeKeyRequest(_message.Message):
    __slots__ = ("name", "version", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    reason: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeResponse(_message.Message):
    __slots__ = ("event", "already_revoked", "cascaded")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    ALREADY_REVOKED_FIELD_NUMBER: _ClassVar[int]
    CASCADED_FIELD_NUMBER: _ClassVar[int]
    event: _revocation_pb2.RevocationEvent
    already_revoked: bool
    cascaded: _containers.RepeatedCompositeFieldContainer[_revocation_pb2.RevocationEvent]
    def __init__(self, event: _Optional[_Union[_revocation_pb2.RevocationEvent, _Mapping]] = ..., already_revoked: _Optional[bool] = ..., cascaded: _Optional[_Iterable[_Union[_revocation_pb2.RevocationEvent, _Mapping]]] = ...) -> None: ...

class ListRevocationsRequest(_message.Message):
    __slots__ = ("active",)
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    active: bool
    def __init__(self, active: _Optional[bool] = ...) -> None: ...

class ListRevocationsResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_revocation_pb2.RevocationEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[_revocation_pb2.RevocationEvent, _Mapping]]] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("seq", "at", "actor", "action", "object", "outcome", "prev_hash", "hash")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    at: int
    actor: str
    action: str
    object: str
    outcome: str
    prev_hash: bytes
    hash: bytes
    def __init__(self, seq: _Optional[int] = ..., at: _Optional[int] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., object: _Optional[str] = ..., outcome: _Optional[str] = ..., prev_hash: _Optional[bytes] = ..., hash: _Optional[bytes] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("after_seq", "limit")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    limit: int
    def __init__(self, after_seq: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...

class VerifyAuditRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VerifyAuditResponse(_message.Message):
    __slots__ = ("intact", "first_bad_seq", "records", "problem")
    INTACT_FIELD_NUMBER: _ClassVar[int]
    FIRST_BAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    intact: bool
    first_bad_seq: int
    records: int
    problem: str
    def __init__(self, intact: _Optional[bool] = ..., first_bad_seq: _Optional[int] = ..., records: _Optional[int] = ..., problem: _Optional[str] = ...) -> None: ...

class BackupRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class BackupResponse(_message.Message):
    __slots__ = ("path", "bytes")
    PATH_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    path: str
    bytes: int
    def __init__(self, path: _Optional[str] = ..., bytes: _Optional[int] = ...) -> None: ...

class ReleaseCertificateRequest(_message.Message):
    __slots__ = ("serial",)
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    serial: str
    def __init__(self, serial: _Optional[str] = ...) -> None: ...

class ReleaseAgentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class SetKeyRequest(_message.Message):
    __slots__ = ("name", "expires_at", "rotate_every")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ROTATE_EVERY_FIELD_NUMBER: _ClassVar[int]
    name: str
    expires_at: int
    rotate_every: int
    def __init__(self, name: _Optional[str] = ..., expires_at: _Optional[int] = ..., rotate_every: _Optional[int] = ...) -> None: ...

class GetKeyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RotateCARequest(_message.Message):
    __slots__ = ("key_type", "now", "revoke_old")
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    NOW_FIELD_NUMBER: _ClassVar[int]
    REVOKE_OLD_FIELD_NUMBER: _ClassVar[int]
    key_type: str
    now: bool
    revoke_old: bool
    def __init__(self, key_type: _Optional[str] = ..., now: _Optional[bool] = ..., revoke_old: _Optional[bool] = ...) -> None: ...

class CAGeneration(_message.Message):
    __slots__ = ("generation", "state", "key_type", "fingerprint", "not_before", "not_after", "valid_certificates", "created_at", "activated_at", "retired_at", "certificate_pem", "cross_certificate_pem", "key_uri")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    VALID_CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTIVATED_AT_FIELD_NUMBER: _ClassVar[int]
    RETIRED_AT_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CROSS_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    KEY_URI_FIELD_NUMBER: _ClassVar[int]
    generation: int
    state: str
    key_type: str
    fingerprint: str
    not_before: int
    not_after: int
    valid_certificates: int
    created_at: int
    activated_at: int
    retired_at: int
    certificate_pem: str
    cross_certificate_pem: str
    key_uri: str
    def __init__(self, generation: _Optional[int] = ..., state: _Optional[str] = ..., key_type: _Optional[str] = ..., fingerprint: _Optional[str] = ..., not_before: _Optional[int] = ..., not_after: _Optional[int] = ..., valid_certificates: _Optional[int] = ..., created_at: _Optional[int] = ..., activated_at: _Optional[int] = ..., retired_at: _Optional[int] = ..., certificate_pem: _Optional[str] = ..., cross_certificate_pem: _Optional[str] = ..., key_uri: _Optional[str] = ...) -> None: ...

class ActivateCARequest(_message.Message):
    __slots__ = ("now", "revoke_old")
    NOW_FIELD_NUMBER: _ClassVar[int]
    REVOKE_OLD_FIELD_NUMBER: _ClassVar[int]
    now: bool
    revoke_old: bool
    def __init__(self, now: _Optional[bool] = ..., revoke_old: _Optional[bool] = ...) -> None: ...

class CancelCARotationRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCAsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCAsResponse(_message.Message):
    __slots__ = ("cas",)
    CAS_FIELD_NUMBER: _ClassVar[int]
    cas: _containers.RepeatedCompositeFieldContainer[CAGeneration]
    def __init__(self, cas: _Optional[_Iterable[_Union[CAGeneration, _Mapping]]] = ...) -> None: ...
