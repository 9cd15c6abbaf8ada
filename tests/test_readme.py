"""The README states facts that code decides: each is compared with the code here.

- the methods the enrollment port serves, with the method table's Role.ANYONE rows;
- every relative link of README.md and certs/README.md names a file in the repository
  (a clone has no ../shared/).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.endpoints.methods import ANONYMOUS_METHODS

ROOT = Path(__file__).resolve().parents[1]
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_enrollment_port_methods_are_the_anonymous_rows() -> None:
    text = (ROOT / "README.md").read_text()
    start = text.index("The enrollment port serves exactly these methods")
    listed = text[start : text.index("\n\n", text.index("\n- ", start))]
    named = set(re.findall(r"`([\w.]+/\w+)`", listed))
    assert {f"/{name}" for name in named} == ANONYMOUS_METHODS


@pytest.mark.parametrize("document", ["README.md", "certs/README.md"])
def test_relative_links_stay_in_the_repository(document: str) -> None:
    path = ROOT / document
    for target in _LINK.findall(path.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue  # http:, https:, mailto:
        resolved = (path.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), f"{document} links outside the repository: {target}"
        assert resolved.exists(), f"{document} links to a missing file: {target}"
