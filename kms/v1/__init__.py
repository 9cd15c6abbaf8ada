"""Generated gRPC stubs for kms.v1. Do not edit: run scripts/gen_protos.py."""
