"""The wire format between clients and `agentrt serve` (see docs/protocol.md).

Every message is one msgpack map: a frozen msgspec Struct tagged by its "type" field, carrying the
protocol version `v`. One union, one typed decoder; anything else is a ProtocolError. Strings and
integers are range-checked by the decoder, and a submission's inputs are bounded in nesting depth
and item count, so no frame can exhaust the server's stack or memory after it is accepted.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from agentrt.errors import AgentrtError

PROTOCOL_VERSION = 1
MAX_INPUT_DEPTH = 64  # nesting of lists/maps inside `inputs`
MAX_INPUT_ITEMS = 100_000  # values (containers and scalars) inside `inputs`

Name = Annotated[str, msgspec.Meta(max_length=256)]
JobId = Annotated[str, msgspec.Meta(max_length=64)]
Token = Annotated[str, msgspec.Meta(max_length=128)]
Priority = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]


class ProtocolError(AgentrtError):
    """A frame that is not a valid message of this protocol."""


class _Msg(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    v: int = PROTOCOL_VERSION


class Hello(_Msg, tag="hello", frozen=True):
    """Ask the server for a client token (the client's identity when CURVE is off)."""

    request_id: Name


class Welcome(_Msg, tag="welcome", frozen=True):
    request_id: Name
    token: str


class Submit(_Msg, tag="submit", frozen=True):
    request_id: Name
    graph: Name
    inputs: dict[str, Any] = {}
    priority: Priority = 0
    idempotency_key: Name | None = None
    traceparent: Name | None = None
    follow: bool = False
    token: Token | None = None
    thread_id: Name | None = None  # continue this conversation (the thread's messages are kept by the server)


class Accepted(_Msg, tag="accepted", frozen=True):
    request_id: str
    job_id: str
    duplicate: bool = False
    token: str | None = None  # issued when the Submit carried none


class Event(_Msg, tag="event", frozen=True):
    job_id: str
    seq: int
    kind: str
    data: dict[str, Any] = {}


class Result(_Msg, tag="result", frozen=True):
    job_id: str
    status: str  # succeeded | failed | cancelled | interrupted
    output: Any = None
    error: str | None = None
    usage: dict[str, Any] = {}
    cost_usd: float = 0.0
    interrupt: Any = None  # status "interrupted": the payload the job's `ctx.interrupt(payload)` asks about


class Resume(_Msg, tag="resume", frozen=True):
    """Continue an interrupted job: its interrupt returns `input`. Answered by a StatusReply
    ("running"), then the job's next Result (with `follow`, its events too)."""

    job_id: JobId
    input: Any = None
    follow: bool = False
    token: Token | None = None


class Cancel(_Msg, tag="cancel", frozen=True):
    job_id: JobId
    token: Token | None = None


class Status(_Msg, tag="status", frozen=True):
    job_id: JobId
    token: Token | None = None


class StatusReply(_Msg, tag="status_reply", frozen=True):
    job_id: str
    state: str  # accepted | running | succeeded | failed | cancelled | cancelling | interrupted | unknown


class Fetch(_Msg, tag="fetch", frozen=True):
    job_id: JobId
    token: Token | None = None


class Error(_Msg, tag="error", frozen=True):
    code: str
    message: str
    request_id: str | None = None
    job_id: str | None = None


Message = Hello | Welcome | Submit | Accepted | Event | Result | Cancel | Status | StatusReply | Fetch | Resume | Error
ClientMessage = Hello | Submit | Cancel | Status | Fetch | Resume

ERROR_CODES = ("bad_frame", "bad_version", "unknown_graph", "too_large", "too_many_inflight", "not_found", "not_interrupted",
               "unauthorized", "internal")

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(msg: Message) -> bytes:
    """Encode one message. Raises ProtocolError if a value cannot be encoded (e.g. an int >= 2**64)."""
    try:
        return _encoder.encode(msg)
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError) as exc:
        raise ProtocolError(f"cannot encode {type(msg).__name__}: {type(exc).__name__}: {exc}") from exc


def decode(frame: bytes) -> Message:
    """Decode one frame. Raises ProtocolError (with the reason) for anything malformed, including
    nesting too deep to decode and a Submit whose inputs exceed MAX_INPUT_DEPTH or MAX_INPUT_ITEMS."""
    try:
        msg = _decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError(str(exc)) from exc
    except RecursionError:
        raise ProtocolError("message is nested too deeply to decode") from None
    if isinstance(msg, Submit):
        check_bounds(msg.inputs, "inputs")
    elif isinstance(msg, Resume):
        check_bounds(msg.input, "input")
    return msg


def check_bounds(value: Any, where: str, max_depth: int = MAX_INPUT_DEPTH, max_items: int = MAX_INPUT_ITEMS) -> None:
    """Raise ProtocolError if `value` nests deeper than `max_depth` or holds more than `max_items` values."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    num_items = 0
    while stack:
        item, depth = stack.pop()
        num_items += 1
        if num_items > max_items:
            raise ProtocolError(f"{where} holds more than {max_items} values")
        if isinstance(item, dict | list):
            if depth >= max_depth:
                raise ProtocolError(f"{where} nests deeper than {max_depth} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children)
