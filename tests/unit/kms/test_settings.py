"""kms/settings.py: one row per setting, read from flags, KMS_* and a file, bounded and shown."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

import pytest

from kms.durations import parse_duration
from kms.errors import InvalidArgument
from kms.settings import Bound, Setting, check_bounds, config_keys, known_keys, options, resolve, show


def _duration(text: str, s: Setting) -> timedelta:
    return parse_duration(text, what=s.flag)


def _int(text: str, s: Setting) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(f"{s.flag} {text!r} is not a whole number") from None


def _text(text: str, s: Setting) -> str:
    return text


TABLE = (
    Setting("cert_ttl", _duration, "24h", "lifetime", (Bound(high="366d", note=": why"), Bound(low="10s"))),
    Setting("buffer", _int, "1024", "events", (Bound("16", "65536", " events"),)),
    Setting("fraction", lambda t, s: float(t), "0.5", "f", (Bound("0", "1", ", like 0.67", exclusive=True),)),
    Setting("timeout", lambda t, s: float(t), "10", "t", (Bound(low="0", exclusive=True, says="must be positive"),), by_key=True),
    Setting("name", _text, "a,b", "names", many=True),
    Setting("database", _text, None, "url", secret=True, redact=lambda url: url.split(":")[0] + ":***", show_unset=False),
    Setting("token", _text, None, "a token", secret=True),
    Setting("dir", _text, None, "dir", env="KMS_AGENT_DIR"),
)  # fmt: skip


def _resolve(
    flags: dict[str, Any] | None = None, env: dict[str, str] | None = None, file: dict[str, Any] | None = None
) -> dict[str, Any]:
    return resolve(TABLE, flags or {}, env or {}, config_keys(file or {}, known_keys(TABLE)))


def test_defaults_then_file_then_environment_then_flags() -> None:
    assert _resolve()["cert_ttl"] == timedelta(hours=24)
    assert _resolve(file={"cert_ttl": "12h"})["cert_ttl"] == timedelta(hours=12)
    env = {"KMS_CERT_TTL": "6h"}
    assert _resolve(env=env, file={"cert_ttl": "12h"})["cert_ttl"] == timedelta(hours=6)
    assert _resolve({"cert_ttl": "3h"}, env, {"cert_ttl": "12h"})["cert_ttl"] == timedelta(hours=3)
    assert _resolve({"cert_ttl": None}, env)["cert_ttl"] == timedelta(hours=6)  # None: not given


@pytest.mark.parametrize("key", ["cert-ttl", "cert_ttl"], ids=["dashes", "underscores"])
def test_a_file_key_is_the_flag_name_in_either_spelling(key: str) -> None:
    assert _resolve(file={key: "2h"})["cert_ttl"] == timedelta(hours=2)


@pytest.mark.parametrize(
    "file, needle",
    [
        ({"cert-tll": "2h"}, "'cert_tll' is unknown: known keys are buffer, cert_ttl,"),
        ({"cert-ttl": "2h", "cert_ttl": "3h"}, "'cert_ttl' twice"),
        ({"cert_ttl": ["2h"]}, "'cert_ttl' must be a string or a number"),
        ({"cert_ttl": True}, "'cert_ttl' must be a string or a number"),
        ({"name": "a"}, "'name' must be a list of names"),
        ({"buffer": "many"}, "--buffer 'many' is not a whole number"),
    ],
    ids=["unknown", "both-spellings", "list", "bool", "not-a-list", "unparsable"],
)
def test_a_bad_file_is_refused_naming_the_key(file: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        _resolve(file=file)


def test_numbers_in_the_file_are_read_as_their_text() -> None:
    assert _resolve(file={"buffer": 64, "fraction": 0.25})["buffer"] == 64
    assert _resolve(file={"fraction": 0.25})["fraction"] == 0.25


def test_a_list_is_a_repeated_flag_a_comma_separated_variable_or_a_file_list() -> None:
    assert _resolve()["name"] == ("a", "b")
    assert _resolve(file={"name": ["f"]})["name"] == ("f",)
    assert _resolve(env={"KMS_NAME": " x, y ,"}, file={"name": ["f"]})["name"] == ("x", "y")
    assert _resolve({"name": ["p", "q"]}, {"KMS_NAME": "x"})["name"] == ("p", "q")
    assert _resolve({"name": []}, {"KMS_NAME": "x"})["name"] == ("x",)  # an empty list: not given


def test_a_typed_flag_is_taken_as_it_is_and_a_variable_may_be_renamed() -> None:
    assert _resolve({"fraction": 0.75}, {"KMS_FRACTION": "0.1"})["fraction"] == 0.75
    assert _resolve(env={"KMS_AGENT_DIR": "/s", "KMS_DIR": "/no"})["dir"] == "/s"


@pytest.mark.parametrize(
    "values, needle",
    [
        ({"cert_ttl": timedelta(days=400)}, "^--cert-ttl must be at most 366d: why$"),
        ({"cert_ttl": timedelta(seconds=5)}, "^--cert-ttl must be at least 10s$"),
        ({"buffer": 15}, "^--buffer must be between 16 and 65536 events$"),
        ({"buffer": 65537}, "^--buffer must be between 16 and 65536 events$"),
        ({"fraction": 1.0}, r"^--fraction 1.0 must be between 0 and 1 \(exclusive\), like 0.67$"),
        ({"timeout": 0.0}, "^timeout must be positive$"),
    ],
    ids=["above", "below", "under-range", "over-range", "exclusive", "says"],
)
def test_bounds_name_the_setting_and_the_limit(values: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        check_bounds(TABLE, values)


def test_values_inside_their_bounds_pass() -> None:
    check_bounds(TABLE, {"cert_ttl": timedelta(days=366), "buffer": 16, "fraction": 0.5, "timeout": 0.1})
    check_bounds(TABLE, {"cert_ttl": None})  # unset: nothing to check


def test_show_redacts_secrets_and_leaves_out_what_asks_to_be() -> None:
    values = _resolve()
    shown = show(TABLE, values)
    assert shown["cert_ttl"] == "1d" and shown["name"] == ["a", "b"] and shown["token"] is None
    assert "database" not in shown  # unset, and show_unset=False
    values.update(database="postgresql://kms:s3cret@db/kms", token="t0k3n")  # noqa: S106 - a test value
    shown = show(TABLE, values)
    assert shown["database"] == "postgresql:***" and shown["token"] == "***"  # noqa: S105
    assert "s3cret" not in str(shown) and "t0k3n" not in str(shown)


def test_options_are_the_flags_with_their_help() -> None:
    parser = argparse.ArgumentParser()
    for flags, kwargs in options(TABLE):
        parser.add_argument(*flags, **kwargs)
    args = parser.parse_args(["--cert-ttl", "2h", "--name", "a", "--name", "b"])
    assert (args.cert_ttl, args.name, args.buffer) == ("2h", ["a", "b"], None)
    assert {a.dest: a.help for a in parser._actions}["cert_ttl"] == "lifetime"
