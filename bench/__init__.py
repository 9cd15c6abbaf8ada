"""Benchmarks for Seed KMS, each measured beside the ceiling of its own stack in the same run.

Not tests: ``python -m bench`` starts a real ``kms-server`` per scenario and bare
``grpc.aio`` baseline servers, drives both from separate client processes, and
reports medians and Seed KMS / baseline ratios (machines are shared and noisy,
so absolute figures mean little on their own).
"""

__all__: list[str] = []
