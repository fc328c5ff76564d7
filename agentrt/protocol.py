"""The wire format between clients and `agentrt serve` (see docs/protocol.md).

Every message is one msgpack map: a frozen msgspec Struct tagged by its "type" field, carrying the
protocol version `v`. One union, one typed decoder; anything else is a ProtocolError.
"""

from __future__ import annotations

from typing import Any

import msgspec

from agentrt.errors import AgentrtError

PROTOCOL_VERSION = 1


class ProtocolError(AgentrtError):
    """A frame that is not a valid message of this protocol."""


class _Msg(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    v: int = PROTOCOL_VERSION


class Submit(_Msg, tag="submit", frozen=True):
    request_id: str
    graph: str
    inputs: dict[str, Any] = {}
    priority: int = 0
    idempotency_key: str | None = None
    traceparent: str | None = None
    follow: bool = False


class Accepted(_Msg, tag="accepted", frozen=True):
    request_id: str
    job_id: str
    duplicate: bool = False


class Event(_Msg, tag="event", frozen=True):
    job_id: str
    seq: int
    kind: str
    data: dict[str, Any] = {}


class Result(_Msg, tag="result", frozen=True):
    job_id: str
    status: str  # succeeded | failed | cancelled
    output: Any = None
    error: str | None = None
    usage: dict[str, Any] = {}
    cost_usd: float = 0.0


class Cancel(_Msg, tag="cancel", frozen=True):
    job_id: str


class Status(_Msg, tag="status", frozen=True):
    job_id: str


class StatusReply(_Msg, tag="status_reply", frozen=True):
    job_id: str
    state: str  # accepted | running | succeeded | failed | cancelled | unknown


class Fetch(_Msg, tag="fetch", frozen=True):
    job_id: str


class Error(_Msg, tag="error", frozen=True):
    code: str
    message: str
    request_id: str | None = None
    job_id: str | None = None


Message = Submit | Accepted | Event | Result | Cancel | Status | StatusReply | Fetch | Error

ERROR_CODES = ("bad_frame", "bad_version", "unknown_graph", "too_large", "too_many_inflight", "not_found", "unauthorized", "internal")

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(msg: Message) -> bytes:
    return _encoder.encode(msg)


def decode(frame: bytes) -> Message:
    """Decode one frame. Raises ProtocolError (with the reason) for anything malformed."""
    try:
        return _decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError(str(exc)) from exc
