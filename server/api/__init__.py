"""The gRPC servicers, one module per proto service, thin over the domain services (STYLE 9).

Authentication, authorization and error mapping happen before them, in server/endpoints/.
convert.py turns domain records into protobuf messages. Nothing here imports server.store:
records come through the domain services (tests/test_layering.py).
"""

__all__: list[str] = []
