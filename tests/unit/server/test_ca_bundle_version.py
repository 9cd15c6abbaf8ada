"""The trust bundle's version (issue 19 §1), on both backends: the event-log seq of the newest
'bundle' event it reflects, moved by each prepare, activation, cancel and retirement, read
before the generations (it never claims more than the bundle shows), and served by GetCABundle
from the same state as the bundle."""

from __future__ import annotations

from typing import cast

from kms.v1 import enrollment_pb2
from server.api.enrollment import EnrollmentServicer
from server.ca.retire import CARetirement
from server.enrollment.service import EnrollmentService
from server.store import Store
from tests.unit.server.conftest import run_with_store
from tests.unit.server.test_ca_activation import NOW, Replica, _old_root, _replica


async def _served(r: Replica) -> tuple[str, int]:
    """What GetCABundle answers on this replica: the trust bundle and its version."""
    servicer = EnrollmentServicer(r.ca, cast(EnrollmentService, None), r.rotation.served_bundle)
    resp = await servicer.GetCABundle(enrollment_pb2.GetCABundleRequest(), None)  # type: ignore[arg-type]
    return resp.trust_bundle_pem, resp.trust_bundle_version


def test_the_version_moves_with_prepare_activate_cancel_and_retire(store_at: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        r = await _replica(store, _old_root())
        lagging = await _replica(store, r.trust.own)  # another replica, that hears no event
        assert await store.ca_bundle_version() == 0 and (await _served(r))[1] == 0
        await r.rotation.rotate(None)  # prepared
        await r.rotation.cancel()
        await r.rotation.rotate(None)  # prepared again
        await r.rotation.activate(True)
        retired = await CARetirement(store, lambda: NOW, r.published.append).check()  # gen 1 signed none
        assert len(retired.retired) == 1
        await r.trust.refresh()  # as on the retirement's 'bundle' event
        seqs = [e.seq for e in r.published]
        assert [(e.kind, e.reason) for e in r.published] == [
            ("bundle", ""),
            ("bundle", "cancelled"),
            ("bundle", ""),
            ("bundle", "activated"),
            ("bundle", "retired"),
        ]
        assert seqs == sorted(seqs) and await store.ca_bundle_version() == seqs[-1]
        pem, version = await _served(r)
        assert version == seqs[-1] == r.trust.version and pem == await r.rotation.bundle_pem()
        # The replica that heard nothing serves the bundle of its last read, with that read's version:
        # older, so an agent holding the newer one refuses it.
        assert (await _served(lagging))[1] == 0
        await lagging.trust.refresh()
        assert await _served(lagging) == (pem, seqs[-1])

    run_with_store(store_at, body)


def test_each_step_serves_its_own_version(store_at: tuple[str, str]) -> None:
    async def body(store: Store) -> None:
        r = await _replica(store, _old_root())
        versions = [(await _served(r))[1]]
        for step in (lambda: r.rotation.rotate(None), r.rotation.cancel, lambda: r.rotation.rotate(None)):
            await step()
            versions.append((await _served(r))[1])
        assert versions == [0, *(e.seq for e in r.published)]
        await r.rotation.activate(True)
        assert (await _served(r))[1] == r.published[-1].seq

    run_with_store(store_at, body)


def test_the_version_is_read_before_the_generations(store_at: tuple[str, str], monkeypatch: object) -> None:
    """A 'bundle' event committed between the two reads (another replica prepares a CA) shows in the
    generations, not in the version: a version never claims more than the bundle shows."""

    async def body(store: Store) -> None:
        r = await _replica(store, _old_root())
        other = await _replica(store, r.trust.own)
        read = store.ca_generations
        armed = [True]

        async def generations(now: int | None) -> object:
            if armed[0]:
                armed[0] = False
                await other.rotation.rotate(None)  # lands after the version was read
            return await read(now)

        monkeypatch.setattr(store, "ca_generations", generations)  # type: ignore[attr-defined]
        await r.trust.refresh()
        (prepared,) = other.published
        assert [g.state for g in r.trust.generations] == ["active", "prepared"]
        assert r.trust.version == 0 < prepared.seq
        pem, version = await _served(r)
        assert version == 0 and pem.count("BEGIN CERTIFICATE") == 3  # the prepared CA, its cross-cert
        await r.trust.refresh()
        assert (await _served(r))[1] == prepared.seq

    run_with_store(store_at, body)
