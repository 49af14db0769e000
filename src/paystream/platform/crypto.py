"""Envelope encryption at rest: AES-256-GCM data keys wrapped by versioned key-encryption keys.

Every record gets its own random 256-bit data key (DEK). The plaintext is sealed with the
DEK (AES-256-GCM, 96-bit random nonce, the record's context as associated data, so a
ciphertext cannot be moved to another record), and the DEK is wrapped by the active
key-encryption key (KEK) of a `Keyring`. Rotating means adding a KEK version and
re-wrapping DEKs — the data itself is never re-encrypted, and old versions keep
unwrapping until nothing refers to them.

`Keyring` is the port: `FileKeyring` reads a JSON file (or the ``PAYSTREAM_KEYRING``
environment variable); a cloud KMS or Vault transit adapter implements the same three
methods. Lookups by value (duplicate cards, a user's email) use a keyed HMAC "blind
index" whose key never rotates with the KEKs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12


class Keyring(Protocol):
    """Where key-encryption keys live (a file here; a KMS in production)."""

    @property
    def active(self) -> str: ...

    def wrap(self, dek: bytes) -> tuple[str, bytes]:
        """(KEK version, wrapped DEK) under the active KEK."""
        ...

    def unwrap(self, version: str, wrapped: bytes) -> bytes: ...

    def blind_index(self, purpose: str, value: str) -> bytes:
        """A keyed, non-rotating HMAC of ``value`` for lookups and duplicate detection."""
        ...


@dataclass(frozen=True, slots=True)
class Sealed:
    kek_version: str
    wrapped_dek: bytes
    nonce: bytes
    ciphertext: bytes


def seal(keyring: Keyring, plaintext: str, context: str) -> Sealed:
    dek = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(dek).encrypt(nonce, plaintext.encode(), context.encode())
    version, wrapped = keyring.wrap(dek)
    return Sealed(version, wrapped, nonce, ciphertext)


def open_sealed(keyring: Keyring, sealed: Sealed, context: str) -> str:
    dek = keyring.unwrap(sealed.kek_version, sealed.wrapped_dek)
    return AESGCM(dek).decrypt(sealed.nonce, sealed.ciphertext, context.encode()).decode()


def rewrap(keyring: Keyring, version: str, wrapped: bytes) -> tuple[str, bytes]:
    """The same DEK, wrapped by the active KEK."""
    return keyring.wrap(keyring.unwrap(version, wrapped))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class FileKeyring:
    """KEK versions in a JSON document: ``{"active", "keks": {version: b64}, "index_key": b64}``."""

    def __init__(self, document: dict[str, object]) -> None:
        keks = document["keks"]
        assert isinstance(keks, dict)
        self._keks = {str(v): base64.b64decode(str(k)) for v, k in keks.items()}
        self._active = str(document["active"])
        self._index_key = base64.b64decode(str(document["index_key"]))
        if self._active not in self._keks or any(len(k) != 32 for k in self._keks.values()):
            raise ValueError("the keyring needs 256-bit KEKs and an active version among them")

    @classmethod
    def load(cls, path: Path | None = None) -> FileKeyring:
        """From ``PAYSTREAM_KEYRING`` (JSON) if set, else from ``path``."""
        raw = os.environ.get("PAYSTREAM_KEYRING")
        if raw:
            return cls(json.loads(raw))
        if path is None:
            raise FileNotFoundError("no keyring: set PAYSTREAM_KEYRING or PAYSTREAM_KEYRING_FILE")
        return cls(json.loads(path.read_text()))

    @staticmethod
    def create(path: Path) -> FileKeyring:
        """A new keyring file (mode 0600) with one KEK, unless one is already there."""
        if not path.exists():
            document = {"active": "v1", "keks": {"v1": _b64(secrets.token_bytes(32))},
                        "index_key": _b64(secrets.token_bytes(32))}
            _write_private(path, document)
        return FileKeyring(json.loads(path.read_text()))

    @staticmethod
    def add_version(path: Path) -> str:
        """Add a KEK version to the file and make it active; returns the new version."""
        document = json.loads(path.read_text())
        numbers = [int(v[1:]) for v in document["keks"] if v.startswith("v") and v[1:].isdigit()]
        version = f"v{max(numbers, default=0) + 1}"
        document["keks"][version] = _b64(secrets.token_bytes(32))
        document["active"] = version
        _write_private(path, document)
        return version

    @property
    def active(self) -> str:
        return self._active

    @property
    def versions(self) -> frozenset[str]:
        return frozenset(self._keks)

    def wrap(self, dek: bytes) -> tuple[str, bytes]:
        nonce = os.urandom(NONCE_BYTES)
        return self._active, nonce + AESGCM(self._keks[self._active]).encrypt(nonce, dek, b"dek")

    def unwrap(self, version: str, wrapped: bytes) -> bytes:
        return AESGCM(self._keks[version]).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], b"dek")

    def blind_index(self, purpose: str, value: str) -> bytes:
        return hmac.new(self._index_key, f"{purpose}:{value}".encode(), hashlib.sha256).digest()


def _write_private(path: Path, document: Mapping[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle, indent=2)
    os.replace(tmp, path)
