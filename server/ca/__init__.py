"""The certificate authority: issuing, the server's TLS identity, the CRL and OCSP."""

__all__: list[str] = []
