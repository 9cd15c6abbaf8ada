"""agent/servers.py: address lists as operators write them, and the one failover rule."""

from __future__ import annotations

import pytest

from agent.servers import Servers, Unreachable, default_enroll_addresses, parse_addresses
from kms.errors import InvalidArgument, PermissionDenied, Unavailable


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["127.0.0.1:8443"], ("127.0.0.1:8443",)),
        (["a:1,b:2"], ("a:1", "b:2")),
        (["a:1", "b:2"], ("a:1", "b:2")),
        (["a:1, b:2", "c:3"], ("a:1", "b:2", "c:3")),
        (["[::1]:8443,kms.example:443"], ("[::1]:8443", "kms.example:443")),
        (["::1:8443"], ("[::1]:8443",)),
    ],
    ids=["one", "comma", "repeated", "both-with-spaces", "ipv6-and-name", "bare-ipv6"],
)
def test_parse_addresses(values: list[str], expected: tuple[str, ...]) -> None:
    assert parse_addresses(values, what="--server") == expected


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        (["a:1,,b:2"], "empty address"),
        (["a:1,"], "empty address"),
        (["nohost"], "HOST:PORT"),
        (["a:1,b:0"], "HOST:PORT"),
        (["a:1,b:port"], "HOST:PORT"),
        (["a:1", "a:1"], "twice"),
        (["a:1,a:1"], "twice"),
        ([], "at least one"),
    ],
    ids=[
        "double-comma",
        "trailing-comma",
        "no-port",
        "port-zero",
        "port-not-number",
        "repeated",
        "twice",
        "none",
    ],
)
def test_parse_addresses_refuses(values: list[str], needle: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_addresses(values, what="KMS_SERVER")
    assert needle in info.value.message and "KMS_SERVER" in info.value.message


def test_default_enroll_addresses_are_each_port_plus_one() -> None:
    assert default_enroll_addresses(("a:8443", "[::1]:9000")) == ("a:8444", "[::1]:9001")
    with pytest.raises(InvalidArgument, match="--enroll-server"):
        default_enroll_addresses(("a:65535",))


def _unreachable(address: str) -> Unreachable:
    return Unreachable(
        address, "connection refused", f"cannot reach kms-server at {address} (connection refused)"
    )


def test_first_available_moves_on_only_when_unavailable_and_sticks() -> None:
    servers = Servers(["a:1", "b:2", "c:3"])
    tried: list[str] = []

    def attempt(address: str) -> str:
        tried.append(address)
        if address == "a:1":
            raise _unreachable(address)
        return address

    assert servers.first_available(attempt, what="kms-server", hint="check") == "b:2"
    assert tried == ["a:1", "b:2"]
    # The address that answered is tried first from now on.
    assert servers.current == "b:2" and servers.order() == ["b:2", "c:3", "a:1"]
    tried.clear()
    assert servers.first_available(attempt, what="kms-server", hint="check") == "b:2"
    assert tried == ["b:2"]


def test_any_other_error_is_final() -> None:
    servers = Servers(["a:1", "b:2"])
    tried: list[str] = []

    def attempt(address: str) -> None:
        tried.append(address)
        raise PermissionDenied("not granted")

    with pytest.raises(PermissionDenied):
        servers.first_available(attempt, what="kms-server", hint="check")
    assert tried == ["a:1"] and servers.current == "a:1"


def test_all_unavailable_is_one_line_naming_each_address() -> None:
    servers = Servers(["a:1", "b:2"])

    def attempt(address: str) -> None:
        if address == "a:1":
            raise _unreachable(address)
        raise Unavailable("no message in time")  # a plain Unavailable: its message is the reason

    with pytest.raises(Unavailable) as info:
        servers.first_available(attempt, what="kms-server", hint="check the addresses")
    message = info.value.message
    assert message == (
        "cannot reach kms-server at any of a:1 (connection refused), b:2 (no message in time): check the addresses"
    )
    assert "\n" not in message
    assert servers.current == "a:1"


def test_one_address_keeps_its_own_message() -> None:
    def attempt(address: str) -> None:
        raise _unreachable(address)

    with pytest.raises(Unreachable) as info:
        Servers(["a:1"]).first_available(attempt, what="kms-server", hint="check")
    assert info.value.message == "cannot reach kms-server at a:1 (connection refused)"


def test_move_past_rotates_once_per_broken_address() -> None:
    servers = Servers(["a:1", "b:2", "c:3"])
    assert servers.move_past("a:1") == "b:2"
    assert servers.move_past("a:1") == "b:2"  # someone already moved on from a:1: no second step
    assert servers.move_past("b:2") == "c:3"
    assert servers.move_past("c:3") == "a:1"  # wraps around
    single = Servers(["a:1"])
    assert single.move_past("a:1") == "a:1"


def test_no_addresses_is_an_error() -> None:
    with pytest.raises(InvalidArgument):
        Servers([])
