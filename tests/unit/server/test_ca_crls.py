"""One CRL per live CA generation (issue 19 §1), checked by openssl: a certificate of each
generation, one of them revoked, verified with the trust bundle and both CRLs; each generation's
certificates name their own CRL (generation 1's /crl, a later one's /crl/N)."""

from __future__ import annotations

import asyncio
import subprocess
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from server.ca.crl import CrlPublisher
from server.store import Store
from tests.unit.server.conftest import open_store_at
from tests.unit.server.test_ca_activation import NOW, _issue, _old_root, _replica, _revoke

PEM = serialization.Encoding.PEM


def _distribution_point(cert: x509.Certificate) -> str:
    (point,) = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert point.full_name is not None
    return str(point.full_name[0].value)


def _verify(tmp: Path, leaf: x509.Certificate, crls: list[Path]) -> subprocess.CompletedProcess[str]:
    (tmp / "leaf.pem").write_bytes(leaf.public_bytes(PEM))
    args = ["openssl", "verify", "-crl_check", "-attime", str(int(NOW.timestamp()) + 60)]
    args += ["-CAfile", str(tmp / "bundle.pem")]
    for crl in crls:
        args += ["-CRLfile", str(crl)]
    return subprocess.run([*args, str(tmp / "leaf.pem")], capture_output=True, text=True, check=False)


def test_each_generation_has_its_own_crl(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    async def body(store: Store) -> None:
        r = await _replica(store, _old_root())
        first = r.ca.certificate
        old_leaf = await _issue(r, key, "web-1")
        await r.rotation.rotate(None)
        await r.rotation.activate(True)
        new_leaf = await _issue(r, key, "web-2")
        assert _distribution_point(old_leaf) == "http://127.0.0.1:9/crl"
        assert _distribution_point(new_leaf) == "http://127.0.0.1:9/crl/2"
        await _revoke(store, new_leaf, "keyCompromise")
        crls = CrlPublisher(r.ca, store, lambda: NOW + timedelta(seconds=30), trust=r.trust)
        one, two = await crls.current(1), await crls.current(2)
        assert await crls.current() == one  # /crl: generation 1's while it is live
        numbers = []
        for der, issuer, revoked in ((one, first, []), (two, r.ca.certificate, [new_leaf.serial_number])):
            crl = x509.load_der_x509_crl(der)
            assert crl.issuer == issuer.subject and crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
            assert [e.serial_number for e in crl] == revoked
            numbers.append(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
        crls.invalidate()
        again = x509.load_der_x509_crl(await crls.current(1))
        assert again.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > max(numbers)
        # openssl, with the bundle of both CAs and both CRLs: the old certificate verifies, the
        # revoked new one does not; either CRL alone is not enough for the other generation.
        (tmp_path / "bundle.pem").write_bytes(first.public_bytes(PEM) + r.ca.certificate.public_bytes(PEM))
        (tmp_path / "crl1.der").write_bytes(one)
        (tmp_path / "crl2.der").write_bytes(two)
        for name in ("crl1", "crl2"):
            pem = x509.load_der_x509_crl((tmp_path / f"{name}.der").read_bytes()).public_bytes(PEM)
            (tmp_path / f"{name}.pem").write_bytes(pem)
        both = [tmp_path / "crl1.pem", tmp_path / "crl2.pem"]
        ok = _verify(tmp_path, old_leaf, both)
        assert ok.returncode == 0 and ok.stdout.strip().endswith(": OK"), ok.stdout + ok.stderr
        bad = _verify(tmp_path, new_leaf, both)
        assert bad.returncode != 0 and "certificate revoked" in bad.stdout + bad.stderr, (
            bad.stdout + bad.stderr
        )
        missing = _verify(tmp_path, old_leaf, [tmp_path / "crl2.pem"])
        assert missing.returncode != 0 and "unable to get certificate CRL" in missing.stdout + missing.stderr

    async def main() -> None:
        store = await open_store_at("sqlite", str(tmp_path))
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())
