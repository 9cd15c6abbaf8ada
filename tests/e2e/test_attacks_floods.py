"""Adversarial stories for issue 15, floods and revocations racing calls: items 5, 6 and 12.

Each test attacks as the review did and fails on the code before the fix.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from kms.groups import Group
from kms.handshake_wire import to_frame
from kms.v1 import identity_pb2, identity_pb2_grpc, revocation_pb2, revocation_pb2_grpc
from tests.e2e.raw_streams import ATTACK_RIG, IN_MEMORY, RawStream, enrolled, hello, serial_of
from tests.harness import (
    ServerProcess,
    WatchProcess,
    agent,
    agent_credentials,
    assert_one_line_error,
    enroll,
    exe,
)

RIG = ATTACK_RIG

ROOT = Path(__file__).resolve().parents[2]


# --- item 5: an exchange flood from one agent -------------------------------------------------------


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def whoami_under_exchange_flood(
    server: ServerProcess, flooder: Path, quiet: Path, seconds: float, lanes: int = 8
) -> tuple[list[float], dict[str, Any]]:
    """Another agent's WhoAmI latencies (s) while flooder replays one ffdhe3072 Hello; the flood's outcome."""
    hello_file = flooder / "hello.bin"
    hello_file.write_bytes(to_frame(hello(flooder, "server", Group.FFDHE3072)).SerializeToString())
    ch = grpc.secure_channel(server.address, agent_credentials(quiet))
    stub = identity_pb2_grpc.IdentityStub(ch)
    request = identity_pb2.WhoAmIRequest()
    try:
        for _ in range(20):  # warm: connection, caches
            stub.WhoAmI(request, timeout=10)
        attacker = subprocess.Popen(
            [sys.executable, "-m", "tests.flood", "exchange", server.address, str(flooder), str(hello_file)]
            + [str(seconds), str(lanes)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # the flood is under way
        latencies: list[float] = []
        while attacker.poll() is None:
            began = time.perf_counter()
            stub.WhoAmI(request, timeout=10)
            latencies.append(time.perf_counter() - began)
            time.sleep(0.005)
        out, err = attacker.communicate(timeout=30)
        assert attacker.returncode == 0, err
        return latencies, json.loads(out)
    finally:
        ch.close()


@IN_MEMORY
def test_an_exchange_flood_is_limited_and_does_not_stall_other_agents(
    rig: tuple[ServerProcess, Path],
) -> None:
    server, root = rig
    flooder, quiet = enrolled(server, root, "flooder"), enrolled(server, root, "quiet")
    seconds = 3.0
    p99s: list[float] = []
    # Up to three floods: a busy machine (the rest of the suite) can delay this test's own calls
    # past 50 ms now and then, whatever the server does; an event loop that really stalls (DH on
    # the loop: p99 0.4-0.9 s) fails every one of them.
    for _ in range(3):
        latencies, flood = whoami_under_exchange_flood(server, flooder, quiet, seconds)
        counts, examples = flood["counts"], flood["examples"]
        # At most --exchange-rate (10) a second, after a burst of as many: the rest are refused with a hint.
        assert counts.get("ok", 0) <= 10 * (seconds + 1) + 10, flood
        assert counts.get("RESOURCE_EXHAUSTED", 0) > 0 and "retry in" in examples["RESOURCE_EXHAUSTED"], flood
        assert len(latencies) > 50
        p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
        print(
            f"WhoAmI under the flood: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms over {len(latencies)} calls"
        )
        p99s.append(p99)
        if p99 < 0.050:
            break
    assert min(p99s) < 0.050, (
        f"another agent's WhoAmI p99 was {[round(p * 1000) for p in p99s]} ms under exchange floods"
    )


# --- item 6: a stolen certificate, renewed, against its revocation -----------------------------------


def test_a_stolen_certificate_does_not_survive_its_revocation_through_renewal(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "d", extra_args=["--max-streams-per-identity", "2"]).start()
    channels: list[grpc.Channel] = []
    watcher: WatchProcess | None = None
    try:
        owner, observer = enrolled(server, tmp_path, "owner"), enrolled(server, tmp_path, "observer")
        thief = tmp_path / "thief"
        shutil.copytree(owner, thief)  # the stolen key and certificate
        stolen = serial_of(owner)
        watcher = WatchProcess(observer)

        # Renewal is limited per agent: one, then none for a while, whoever asks.
        assert agent(thief, "renew").returncode == 0
        renewed = serial_of(thief)
        assert_one_line_error(agent(thief, "renew"), 7, "renews at most once", "retry in")
        assert_one_line_error(agent(owner, "renew"), 7, "renews at most once", "retry in")

        # Open streams count per agent: the owner's two leave none for the thief's certificates.
        owner_ch = grpc.secure_channel(server.address, agent_credentials(owner))
        thief_ch = grpc.secure_channel(server.address, agent_credentials(thief))
        channels += [owner_ch, thief_ch]
        held = [
            RawStream(revocation_pb2_grpc.RevocationStub(owner_ch).Watch(revocation_pb2.WatchRequest()))
            for _ in (1, 2)
        ]
        for stream in held:
            assert stream.first.wait(10) and stream.code is None, stream.details
        extra = RawStream(revocation_pb2_grpc.RevocationStub(thief_ch).Watch(revocation_pb2.WatchRequest()))
        assert extra.wait(10) and extra.code == grpc.StatusCode.RESOURCE_EXHAUSTED, (
            extra.code,
            extra.details,
        )
        for stream in held:
            stream.close()

        # keyCompromise of the stolen certificate reaches everything renewed from it.
        # (At any depth: tests/unit/server/test_store*.py.) Every watcher hears of each certificate.
        done = json.loads(
            server.admin("revoke", "cert", "--yes", stolen, "--reason", "keyCompromise", "--json").stdout
        )
        assert done["serial"] == stolen and not done["already_revoked"]
        assert [e["serial"] for e in done["cascaded"]] == [renewed]
        assert_one_line_error(agent(thief, "status"), 11, "was revoked")
        watcher.wait_for(lambda events: {renewed, stolen} <= {e.get("serial") for e in events})
    finally:
        if watcher is not None:
            watcher.stop()
        for ch in channels:
            ch.close()
        assert server.stop() == 0


# --- item 12: key releases in flight while the agent is revoked -------------------------------------


def test_no_key_release_is_recorded_after_the_revocation_of_its_caller(
    rig: tuple[ServerProcess, Path],
) -> None:
    """Three agents fetch a key flat out; each is revoked meanwhile. No release of theirs may be
    recorded after their revocation (in the review: after 12 of 20 revocations)."""
    server, root = rig
    server.admin("key", "create", "app", "--grant", "group:fetchers")
    names = [f"fetcher-{trial}" for trial in range(3)]
    for name in names:
        assert enroll(server, root / name, server.token(name, "fetchers")).returncode == 0
    stop = root / "stop-fetching"
    floods = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.flood",
                "fetch-key",
                server.address,
                str(root / name),
                "app",
                "30",
                "24",
            ]
            + [str(stop)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        for name in names
    ]
    time.sleep(1.0)  # releases under way
    revokes = [
        subprocess.Popen(
            [exe("kms-server"), "revoke", "agent", "--yes", name, "--data-dir", str(server.data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        for name in names
    ]
    for revoke in revokes:
        assert revoke.wait(60) == 0, revoke.communicate()[1]
    time.sleep(0.5)  # releases still under way after the revocations: they must all be refused
    stop.touch()
    outcomes = []
    for flood in floods:
        out, err = flood.communicate(timeout=60)
        assert flood.returncode == 0, err
        outcomes.append(json.loads(out)["counts"])
    records = json.loads(server.admin("audit", "list", "--json").stdout)
    late = {}
    for name in names:
        revoked = next(
            r["seq"] for r in records if r["action"] == "revoke.agent" and f"agent:{name} " in r["object"]
        )
        late[name] = sum(
            1
            for r in records
            if r["action"] == "key.release" and r["actor"].startswith(f"agent:{name}/") and r["seq"] > revoked
        )
    assert late == dict.fromkeys(names, 0), f"releases recorded after each agent's revocation: {late}"
    # Each flood was refused once its agent was revoked, having been served until then.
    assert all(o.get("ok", 0) > 0 and o.get("UNAUTHENTICATED", 0) > 0 for o in outcomes), outcomes
