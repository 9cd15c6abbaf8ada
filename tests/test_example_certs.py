"""certs/examples/: what scripts/make_example_certs.py makes, checked against the code that issues it.

One throwaway server (the script's) per run. The regenerated artifacts must have the
committed profile (extensions, key usages, lifetimes, key types; not serials or dates), pass
pkilint with only the findings certs/README.md explains, and `openssl verify -x509_strict`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
from cryptography import x509

from kms import filesig
from kms.errors import DataLoss
from kms.peers import agent_peer
from tests.harness import exe, run

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "certs" / "examples"

# pkilint's URI and DNS checks use the `validators` library, which knows only web URL schemes
# and wants a TLD; RFC 5280 §4.2.1.6 takes any RFC 3986 URI and any preferred-name-syntax
# label. certs/README.md ("pkilint") says why these two are accepted.
ACCEPTED = {
    ("server.crt", "pkix.invalid_domain_name_syntax", 'Invalid domain name syntax: "localhost"'),
    ("agent.crt", "pkix.invalid_uri_syntax", 'Invalid URI syntax: "spiffe://seed-kms.local/agent/web-1"'),
}


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_example_certs", ROOT / "scripts" / "make_example_certs.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("examples")
    _script().generate(out)
    return out


def test_committed_examples_have_the_committed_profile() -> None:
    assert _script().profile(EXAMPLES) == json.loads((EXAMPLES / "profile.json").read_text())


def test_regenerated_examples_have_the_committed_profile(fresh: Path) -> None:
    """A change to what is issued fails here: regenerate, and say why in certs/README.md."""
    committed = json.loads((EXAMPLES / "profile.json").read_text())
    regenerated = json.loads((fresh / "profile.json").read_text())
    for name in committed.keys() | regenerated.keys():
        assert regenerated.get(name) == committed.get(name), (
            f"{name} drifted from certs/examples/profile.json: run python scripts/make_example_certs.py"
        )


def test_no_private_key_is_committed() -> None:
    header = "PRIVATE" + " KEY-----"  # split: no tracked file holds the header itself
    for path in (ROOT / "certs").rglob("*"):
        if path.is_file():
            assert header.encode() not in path.read_bytes(), path


def _lints(examples: Path) -> dict[str, list[str]]:
    e = examples
    return {
        "ca.crt": ["lint_pkix_cert", "lint", str(e / "ca.crt")],
        "server.crt": ["lint_pkix_cert", "lint", str(e / "server.crt")],
        "agent.crt": ["lint_pkix_cert", "lint", str(e / "agent.crt")],
        "ca.crt>server.crt": [
            "lint_pkix_signer_signee_cert_chain",
            "lint",
            str(e / "ca.crt"),
            str(e / "server.crt"),
        ],
        "ca.crt>agent.crt": [
            "lint_pkix_signer_signee_cert_chain",
            "lint",
            str(e / "ca.crt"),
            str(e / "agent.crt"),
        ],
        "crl.der": ["lint_crl", "lint", "-t", "CRL", "-p", "PKIX", str(e / "crl.der")],
        "ocsp-response.der": ["lint_ocsp_response", "lint", str(e / "ocsp-response.der")],
    }


def test_pkilint_finds_only_what_is_accepted(fresh: Path) -> None:
    procs = {
        name: subprocess.Popen(
            [exe(cmd[0]), *cmd[1:2], "-s", "WARNING", "-f", "JSON", *cmd[2:]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, cmd in _lints(fresh).items()
    }  # at once: each linter spends its ~0.5 s starting up
    findings = set()
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert out.strip(), f"{name}: the linter printed nothing: {err}"
        for result in json.loads(out)["results"]:
            for f in result["finding_descriptions"]:
                findings.add((name, f["code"], f.get("message") or ""))
    assert findings == ACCEPTED  # equal, not a subset: the linter really ran and read the SANs


def test_openssl_verifies_strictly(fresh: Path) -> None:
    certs = [str(fresh / name) for name in ("ca.crt", "server.crt", "agent.crt")]
    ok = run(["openssl", "verify", "-x509_strict", "-CAfile", certs[0], *certs])
    assert ok.returncode == 0 and ok.stdout.count(": OK") == 3, ok.stdout + ok.stderr
    crl = run(
        ["openssl", "crl", "-inform", "DER", "-in", str(fresh / "crl.der"), "-CAfile", certs[0], "-noout"]
    )
    assert crl.returncode == 0 and "verify OK" in crl.stdout + crl.stderr, crl.stdout + crl.stderr
    status = run(
        [
            "openssl",
            "ocsp",
            "-respin",
            str(fresh / "ocsp-response.der"),
            "-CAfile",
            certs[0],
            "-VAfile",
            certs[0],
        ]
        + ["-issuer", certs[0], "-sha256", "-cert", certs[2], "-no_nonce"]
    )  # certs/README.md's command
    assert "Response verify OK" in status.stdout + status.stderr and ": good" in status.stdout, status.stdout
    # The committed ones too: their dates have passed, not their structure.
    committed = [str(EXAMPLES / name) for name in ("ca.crt", "server.crt", "agent.crt")]
    ok = run(["openssl", "verify", "-x509_strict", "-no_check_time", "-CAfile", committed[0], *committed])
    assert ok.returncode == 0 and ok.stdout.count(": OK") == 3, ok.stdout + ok.stderr


def test_committed_signature_file_verifies() -> None:
    """example.txt.sig is a real signature by web-1 over example.txt, checked at its signing time."""
    ca = x509.load_pem_x509_certificate((EXAMPLES / "ca.crt").read_bytes())
    sig = filesig.parse((EXAMPLES / "example.txt.sig").read_bytes())
    digest = hashlib.sha256((EXAMPLES / "example.txt").read_bytes()).digest()
    signer = filesig.verify_file(
        sig,
        digest,
        lambda when: agent_peer([ca], "seed-kms.local", "web-1", when, lambda s: False),
        sig.signed_at,
    )
    assert signer.name == "web-1"
    with pytest.raises(DataLoss):
        filesig.verify_file(
            sig,
            bytes(32),
            lambda when: agent_peer([ca], "seed-kms.local", None, when, lambda s: False),
            sig.signed_at,
        )
