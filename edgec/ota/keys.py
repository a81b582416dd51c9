"""Ed25519 keys for signing adapter patches (the `cryptography` package): PEM files, raw public bytes."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgec.errors import EdgecError


def generate_keypair(path: Path) -> tuple[Path, Path]:
    """Write a new private key to `path` (PEM PKCS#8, mode 0600) and its public key to `path`.pub (PEM)."""
    path = Path(path)
    pub_path = path.with_name(path.name + ".pub")
    for p in (path, pub_path):
        if p.exists():
            raise EdgecError(f"{p}: already exists (keys are not overwritten)")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    return path, pub_path


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise EdgecError(f"{path}: cannot read the private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise EdgecError(f"{path}: not an Ed25519 private key")
    return key


def load_public_raw(path: Path) -> bytes:
    """The raw 32 bytes of an Ed25519 public key file (PEM)."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise EdgecError(f"{path}: cannot read the public key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise EdgecError(f"{path}: not an Ed25519 public key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def verify_signature(public_raw: bytes, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, message)
        return True
    except InvalidSignature:
        return False
