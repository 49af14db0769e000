"""Signed checkpoints of the ledger's hash chain: what a rewrite of the whole chain cannot fake.

The chain alone proves history is internally consistent, but someone who can write the
database could recompute every hash after a change. A checkpoint is the chain's hash
at one seq, signed with an Ed25519 key kept outside the database (a PEM file of the
operator's), so a rewritten chain no longer matches the signed hashes before it.

`paystream ledger verify` writes them, off the posting path: one every ``EVERY``
entries and one at the head, only after the chain has verified (a broken chain is
never signed).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

EVERY = 1000


def message(seq: int, chain_hash: bytes) -> bytes:
    """What is signed: the chain's hash at ``seq``, in a form meant for nothing else."""
    return f"paystream-ledger-checkpoint-v1:{seq}:{chain_hash.hex()}".encode()


def key_id(public: Ed25519PublicKey) -> str:
    """A short stable name for a key, stored with each checkpoint it signs."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ck_" + hashlib.sha256(raw).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, seq: int, chain_hash: bytes) -> bytes:
    return key.sign(message(seq, chain_hash))


def signature_ok(public: Ed25519PublicKey, seq: int, chain_hash: bytes, signature: bytes) -> bool:
    try:
        public.verify(signature, message(seq, chain_hash))
    except InvalidSignature:
        return False
    return True


def due(last_seq: int, signed: set[int], every: int = EVERY) -> list[int]:
    """The seqs that should carry a checkpoint and do not yet: each multiple of ``every``, and the head."""
    wanted = set(range(every, last_seq + 1, every))
    if last_seq > 0:
        wanted.add(last_seq)
    return sorted(wanted - signed)


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The checkpoint key at ``path``, made (readable by its owner only) on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key
