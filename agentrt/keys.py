"""CurveZMQ key pairs for `agentrt serve` and its clients (`agentrt keys generate`)."""

from __future__ import annotations

from pathlib import Path

import zmq.auth


def generate_keypair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key (public) and NAME.key_secret (secret) certificates into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    return Path(public), Path(secret)


def load_keypair(secret_file: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a NAME.key_secret certificate. Raises ValueError if it has no secret."""
    public, secret = zmq.auth.load_certificate(str(secret_file))
    if secret is None:
        raise ValueError(f"{secret_file} holds no secret key (use the .key_secret file)")
    return public, secret


def load_public_key(public_file: str | Path) -> bytes:
    public, _ = zmq.auth.load_certificate(str(public_file))
    return public
