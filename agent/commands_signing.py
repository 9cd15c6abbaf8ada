"""kms-agent signature commands: sign and verify."""

from __future__ import annotations

import argparse
import hashlib
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from agent.context import connect, state_dir
from agent.issuance import trust_domain_of
from kms import filesig
from kms.cli import print_json
from kms.errors import InvalidArgument
from kms.peers import agent_peer
from kms.securefile import write_atomic

__all__ = ["cmd_sign", "cmd_verify"]


def _sha256_file(path: Path) -> bytes:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None
    return digest.digest()


def cmd_sign(args: argparse.Namespace) -> int:
    identity = state_dir(args).load()
    from cryptography.hazmat.primitives.serialization import Encoding

    digest = _sha256_file(Path(args.file))
    chain = (identity.cert.public_bytes(Encoding.DER),)
    sig = filesig.create(identity.key, chain, digest, int(datetime.now(UTC).timestamp()))
    out = Path(args.out) if args.out else Path(args.file + ".sig")
    write_atomic(out, sig.encode(), mode=0o644)
    print(f"signed {args.file} as {identity.settings.name}: {out}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        sig = filesig.parse(Path(args.signature).read_bytes())
    except OSError as exc:
        raise InvalidArgument(f"cannot read {args.signature}: {exc.strerror}") from None
    digest = _sha256_file(Path(args.file))
    identity, client = connect(args)
    ca = x509.load_pem_x509_certificate(identity.ca_bundle_pem)
    trust_domain = trust_domain_of(identity.settings.spiffe_id)
    with client:

        def is_revoked(serial: str) -> bool:  # revocation status now, from the server
            return client.check_certificate(serial).status != "good"

        signer = filesig.verify_file(
            sig,
            digest,
            lambda when: agent_peer(ca, trust_domain, args.signer, when, is_revoked),
            int(datetime.now(UTC).timestamp()),
        )
    signed = datetime.fromtimestamp(sig.signed_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if args.json:
        print_json({"valid": True, "signer": signer.name, "serial": signer.serial, "signed_at": signed})
    else:
        print(f"good signature by {signer.name} (certificate {signer.serial}) made {signed}")
    return 0
