"""Key material: made and sealed for a new version, unsealed and wrapped for the certificate
that asks, with the wrappings kept.

Material is drawn from the OS CSPRNG (AES keys) or generated (key pairs: pairs.py),
and sealed under the master key in a slot named for its key and version, so a
ciphertext moved to another row does not open.
"""

from __future__ import annotations

import os
from collections import OrderedDict

from kms.keypairs import is_key_pair
from kms.wrap import KEY_BYTES, wrap
from server.deployment.sealing import Sealer
from server.endpoints.authn import Caller
from server.keys.pairs import pair_sealer, wrap_pair
from server.store import KeyVersionRecord
from server.store.records import SealFn

__all__ = ["Material"]

# Wrapped keys kept for repeated releases (a few hundred bytes each; about 2 KB for a pair).
_WRAPPED_CACHE = 10_000


def _slot(name: str, version: int) -> str:
    return f"aes-key/{name}/{version}"


class Material:
    def __init__(self, sealer: Sealer) -> None:
        self._sealer = sealer
        self._wrapped: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()

    def sealer_for(self, name: str, key_type: str) -> SealFn:
        """Seals fresh material of key_type for a version number the store allocates.

        A key pair is generated here, before the store's transaction (it may take
        seconds): the function returned only seals.
        """
        if is_key_pair(key_type):
            return pair_sealer(self._sealer, name, key_type)

        def seal(version: int) -> bytes:
            return self._sealer.seal(_slot(name, version), os.urandom(KEY_BYTES))

        return seal

    def forget(self, name: str, version: int) -> None:
        """Drops the kept wrappings of a version that is compromised or destroyed."""
        for slot in [s for s in self._wrapped if s[1:] == (name, version)]:
            del self._wrapped[slot]

    def wrapped_for(self, caller: Caller, record: KeyVersionRecord) -> bytes:
        """The version's material wrapped for the caller's certificate.

        A certificate asking again for the same version gets the same wrapping:
        it is public-key ciphertext only that certificate's key opens, so
        reusing it reveals nothing, and it saves an unseal and an RSA operation
        per release. The store has already decided this release is allowed.
        """
        slot = (caller.serial, record.key_name, record.version)
        wrapped = self._wrapped.get(slot)
        if wrapped is None:
            if record.public_key is not None:  # a key pair's private key (wrap format 2)
                wrapped = wrap_pair(self._sealer, caller, record)
            else:
                assert record.sealed_material is not None
                material = self._sealer.open(_slot(record.key_name, record.version), record.sealed_material)
                wrapped = wrap(caller.public_key, material, record.key_name, record.version, caller.serial)
            self._wrapped[slot] = wrapped
            if len(self._wrapped) > _WRAPPED_CACHE:
                self._wrapped.popitem(last=False)
        else:
            self._wrapped.move_to_end(slot)
        return wrapped
