"""Key material made at bench time (never committed): agent keys, CSRs, and the baselines' PKI.

The baselines use the same key types as Seed KMS so the TLS work is the same:
an ECDSA P-256 CA, an ECDSA P-256 server certificate for 127.0.0.1 (what
kms-server issues itself), and RSA-2048 client certificates (what agents hold).
RSA key generation is slow, so one pool of agent keys is made per run, in
parallel, and shared by every scenario (each scenario has its own server).
"""

from __future__ import annotations

import datetime
import ipaddress
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bench.workers import spawn_context

__all__ = ["AgentKey", "BaselinePki", "Identity", "make_agent_keys", "make_baseline_pki"]

_PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class Identity:
    """What a client process needs for mutual TLS (PEM, picklable)."""

    key_pem: bytes
    cert_pem: bytes


@dataclass(frozen=True)
class AgentKey:
    """An RSA-2048 agent key and a CSR for it (the server takes only the CSR's public key)."""

    key_pem: bytes
    csr_der: bytes


def _one_agent_key(_: int) -> AgentKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    pem = key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return AgentKey(pem, csr.public_bytes(serialization.Encoding.DER))


def make_agent_keys(count: int, processes: int = 2) -> list[AgentKey]:
    """count RSA-2048 keys with CSRs, made in parallel (spawned: the parent may hold gRPC state)."""
    with ProcessPoolExecutor(processes, mp_context=spawn_context()) as pool:
        return list(pool.map(_one_agent_key, range(count), chunksize=max(1, count // (4 * processes))))


@dataclass(frozen=True)
class BaselinePki:
    ca_pem: bytes
    server: Identity
    clients: list[Identity]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_baseline_pki(client_keys: list[AgentKey]) -> BaselinePki:
    """A P-256 CA, a P-256 server certificate for 127.0.0.1, and one client certificate per agent key."""
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("bench baseline CA"))
        .issuer_name(_name("bench baseline CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, cn: str, server: bool) -> bytes:
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        return builder.sign(ca_key, hashes.SHA256()).public_bytes(_PEM)

    server_key = ec.generate_private_key(ec.SECP256R1())
    server = Identity(
        server_key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        leaf(server_key.public_key(), "127.0.0.1", server=True),
    )
    clients = []
    for i, agent_key in enumerate(client_keys):
        key = serialization.load_pem_private_key(agent_key.key_pem, None)
        assert isinstance(key, rsa.RSAPrivateKey)
        clients.append(Identity(agent_key.key_pem, leaf(key.public_key(), f"bench-client-{i}", server=False)))
    return BaselinePki(ca_cert.public_bytes(_PEM), server, clients)
