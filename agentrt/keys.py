"""CurveZMQ key pairs for `agentrt serve` and its clients (`agentrt keys generate`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import zmq.auth


def generate_keypair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key (public, 0644) and NAME.key_secret (secret, 0600 whatever the umask) into
    `directory`. The pair is made in a private (0700) temporary folder and moved in, so the secret is
    never readable by others, even for a moment. Raises FileExistsError rather than overwrite a key."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise FileExistsError(f"{path} exists; refusing to overwrite a key")
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=".keys-"))  # mkdtemp makes it 0700
    try:
        made_public, made_secret = (Path(f) for f in zmq.auth.create_certificates(str(staging), name))
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
        os.replace(made_secret, secret)
        os.replace(made_public, public)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return public, secret


def load_keypair(secret_file: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a NAME.key_secret certificate. Raises ValueError if it has no secret."""
    public, secret = zmq.auth.load_certificate(str(secret_file))
    if secret is None:
        raise ValueError(f"{secret_file} holds no secret key (use the .key_secret file)")
    return public, secret


def load_public_key(public_file: str | Path) -> bytes:
    public, _ = zmq.auth.load_certificate(str(public_file))
    return public
