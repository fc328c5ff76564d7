"""Who a client is, so that results, status and cancellation reach only a job's owner.

With CURVE on, a client's identity is its public key (authenticated by the handshake). Without it,
the server issues each client a token `ID.MAC` (MAC = HMAC-SHA256 of ID under the journal's secret);
the client sends it with every request and the identity is the ID. Tokens cannot be forged without
the secret, survive server restarts (the secret lives in the journal) and, unlike ZeroMQ routing ids
(which every process hands out in the same sequence), never name another client. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from agentrt.errors import AgentrtError


class UnauthorizedError(AgentrtError):
    """A token that this server did not issue."""


class TokenIssuer:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError(f"the token secret must be at least 16 bytes, got {len(secret)}")
        self._secret = secret

    def _mac(self, ident: str) -> str:
        return hmac.new(self._secret, ident.encode(), hashlib.sha256).hexdigest()[:32]

    def issue(self) -> tuple[str, str]:
        """A new (token, identity) pair."""
        ident = secrets.token_hex(16)
        return f"{ident}.{self._mac(ident)}", f"t:{ident}"

    def identity(self, token: str) -> str:
        """The identity a token stands for. Raises UnauthorizedError if it was not issued here."""
        ident, _, mac = token.partition(".")
        if not ident or not hmac.compare_digest(mac, self._mac(ident)):
            raise UnauthorizedError(f"token {token[:8]!r}... was not issued by this server")
        return f"t:{ident}"


def curve_identity(public_key_z85: str) -> str:
    return f"k:{public_key_z85}"
