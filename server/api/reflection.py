"""Server reflection, grpc.reflection.v1 as well as v1alpha, over grpcio-reflection's servicer.

grpcio-reflection (1.85.1, its newest release) serves only grpc.reflection.v1alpha, while
grpcurl, Postman and grpc-js try grpc.reflection.v1 first. The two protocols are the same
messages with the same field numbers under another package (grpc/reflection/v1 was copied from
v1alpha when it was declared stable), so the library's servicer answers both: v1 calls are
decoded and encoded with the v1alpha classes. So that reflection can also describe the v1
service itself, its file descriptor (v1alpha's, renamed) is added to the default pool once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

__all__ = ["V1", "V1ALPHA", "add_reflection"]

V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
V1 = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _add_v1_descriptor() -> None:
    """grpc/reflection/v1/reflection.proto in the default pool: v1alpha's file under v1's names."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
        return  # already there (a library that ships v1, or a second call)
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = _V1_FILE, "grpc.reflection.v1"
    proto.ClearField("options")  # v1alpha's language options (packages of generated code)
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    for message in proto.message_type:
        for field in message.field:
            if field.type_name:  # messages only: a scalar has none, and an empty one is an error
                field.type_name = field.type_name.replace(old, new)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    pool.Add(proto)


def add_reflection(server: Any, service_names: Iterable[str]) -> None:
    """Registers reflection v1 and v1alpha on server (or a stand-in), listing service_names and themselves.

    Args:
        server: a grpc.aio.Server, or an object with its add_*_handlers methods.
        service_names: the full names of the other services the server serves.
    """
    _add_v1_descriptor()
    servicer = ReflectionServicer([*service_names, V1ALPHA, V1])
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handlers = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1, handlers),))
    server.add_registered_method_handlers(V1, handlers)
