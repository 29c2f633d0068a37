"""Gossip encryption: the keyring and memberlist's AES-GCM framing.

Owns the keys one gossip pool uses and the bytes of an encrypted message::

    version (1 byte, 1) | nonce (12 bytes) | AES-GCM ciphertext + 16-byte tag

(memberlist's encryption version 1, no padding). The first key of the ring is the primary one
(used to encrypt); every key is tried to decrypt, so a key rotation can install a new key
everywhere before making it primary. The ring is persisted as a JSON list of base64 keys in
``<data_dir>/serf/local.keyring`` (Consul's file and format).
"""

from __future__ import annotations

import base64
import binascii
import json
import os

ENCRYPTION_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
VALID_KEY_SIZES = (16, 24, 32)
KEYRING_FILE = os.path.join("serf", "local.keyring")


class KeyringError(ValueError):
    """A key is not valid base64 of 16, 24 or 32 bytes (the operator's input)."""


class DecryptError(ValueError):
    """A message could not be decrypted with any installed key (the peer's problem)."""


def decode_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError("key is not valid base64") from None
    if len(key) not in VALID_KEY_SIZES:
        raise KeyringError(f"key must be 16, 24 or 32 bytes, got {len(key)}")
    return key


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def generate_key() -> str:
    """A fresh 32-byte key, base64 (``proconsul keygen``)."""
    return encode_key(os.urandom(32))


class Keyring:
    """Installed keys, primary first."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise KeyringError("a keyring needs at least one key")
        for k in keys:
            if len(k) not in VALID_KEY_SIZES:
                raise KeyringError(f"key must be 16, 24 or 32 bytes, got {len(k)}")
        self.keys = list(dict.fromkeys(keys))

    @property
    def primary(self) -> bytes:
        return self.keys[0]

    def install(self, key: bytes) -> None:
        # Messages as memberlist's keyring words them: serf sends them back to the operator.
        if len(key) not in VALID_KEY_SIZES:
            raise KeyringError("key size must be 16, 24 or 32 bytes")
        if key not in self.keys:
            self.keys.append(key)

    def use(self, key: bytes) -> None:
        if key not in self.keys:
            raise KeyringError("Requested key is not in the keyring")
        self.keys.remove(key)
        self.keys.insert(0, key)

    def remove(self, key: bytes) -> None:
        if key == self.primary:
            raise KeyringError("Removing the primary key is not allowed")
        if key in self.keys:
            self.keys.remove(key)

    def encrypt(self, data: bytes) -> bytes:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # only pools with a key need it

        nonce = os.urandom(NONCE_SIZE)
        header = bytes((ENCRYPTION_VERSION,))
        return header + nonce + AESGCM(self.primary).encrypt(nonce, data, None)

    def decrypt(self, data: bytes) -> bytes:
        if len(data) < 1 + NONCE_SIZE + TAG_SIZE:
            raise DecryptError("encrypted message too short")
        if data[0] != ENCRYPTION_VERSION:
            raise DecryptError(f"unsupported encryption version {data[0]}")
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # only pools with a key need it

        nonce, body = data[1 : 1 + NONCE_SIZE], data[1 + NONCE_SIZE :]
        for key in self.keys:
            try:
                return AESGCM(key).decrypt(nonce, body, None)
            except Exception:  # InvalidTag: try the next key
                continue
        raise DecryptError("no installed key decrypts the message")

    # --- persistence ------------------------------------------------------------------------

    def save(self, data_dir: str) -> None:
        path = os.path.join(data_dir, KEYRING_FILE)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = path + ".tmp"
        # The keyring holds the gossip encryption keys: 0600 as Consul creates it, whatever the
        # umask, and tightened if an older tmp file was left behind.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            json.dump([encode_key(k) for k in self.keys], fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, data_dir: str) -> Keyring | None:
        path = os.path.join(data_dir, KEYRING_FILE)
        try:
            with open(path, encoding="ascii") as fh:
                raw = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise KeyringError(f"cannot read keyring {path}: {exc}") from None
        if not isinstance(raw, list) or not all(isinstance(k, str) for k in raw):
            raise KeyringError(f"keyring {path} is not a list of keys")
        return cls([decode_key(k) for k in raw])


def setup_keyring(encrypt: str, data_dir: str | None) -> Keyring | None:
    """Consul's rule: a keyring on disk wins over ``encrypt`` (which only seeds a new one)."""
    ring = Keyring.load(data_dir) if data_dir else None
    if ring is not None:
        return ring
    if not encrypt:
        return None
    ring = Keyring([decode_key(encrypt)])
    if data_dir:
        ring.save(data_dir)
    return ring
