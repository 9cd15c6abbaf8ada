"""Code both sides of Seed KMS share: generated stubs (kms.v1) and pure protocol pieces."""

__all__: list[str] = []
