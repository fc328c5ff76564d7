"""The OpenAI-compatible HTTP server over one `engine.LLM` (FastAPI): /v1/chat/completions,
/v1/completions, /v1/models, /health. Requests run concurrently through `LLM.stream`, so the engine
batches them; a client that disconnects aborts its request (the stream's exit frees its KV).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from engine.chat.session import chat_params, select_tools, to_chat_output
from engine.errors import InvalidRequestError
from engine.sequence import RequestOutput
from engine.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    check_chat_request,
    response_schema,
    sampling_params,
)
from engine.serve.stream import chat_chunks, tool_calls_json

logger = logging.getLogger(__name__)
DEFAULT_MAX_TOKENS = 256


def create_app(llm: Any, model_name: str = "agentrt-default") -> FastAPI:
    """A FastAPI app serving `llm` under `model_name`."""
    app = FastAPI(title="agentrt engine", description="OpenAI-compatible API over engine.LLM")

    @app.exception_handler(InvalidRequestError)
    async def invalid(_: Request, exc: InvalidRequestError) -> JSONResponse:
        return _error(str(exc), 400)

    @app.exception_handler(RequestValidationError)
    async def malformed(_: Request, exc: RequestValidationError) -> JSONResponse:
        """A body that is not JSON or does not fit the request's shape: a 400 in OpenAI's error
        shape naming the first bad field (FastAPI's default is a 422 in its own shape)."""
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return _error(f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}", 400)
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return _error(f"{where or 'body'}: {first.get('msg', 'invalid request')}", 400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(str(exc.detail), exc.status_code)

    def check_model(name: str | None) -> None:
        if name is not None and name != model_name:
            raise HTTPException(404, f"the model {name!r} does not exist; this server serves {model_name!r}")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "agentrt"}]}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Any:
        check_model(req.model)
        params = sampling_params(req, DEFAULT_MAX_TOKENS, response_schema(req.response_format))
        ids = llm.encode(req.prompt) if isinstance(req.prompt, str) else list(req.prompt)
        llm.core.validate(ids, params)
        rid = f"cmpl-{uuid.uuid4().hex}"
        if req.stream:
            return StreamingResponse(_sse(_completion_chunks(llm, ids, params, rid, model_name, req)), media_type="text/event-stream")
        out = await _final(llm, ids, params, rid, request)
        choice = {"index": 0, "text": out.text, "finish_reason": _reason(out), "logprobs": None, "stop_reason": _stop_reason(out, params)}
        if req.return_token_ids:
            choice["token_ids"] = list(out.token_ids)
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model_name,
                "choices": [choice], "usage": usage(out)}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
        check_model(req.model)
        check_chat_request(req.messages, req.chat_template_kwargs)
        fmt = llm.chat_format
        tools, choice = select_tools(req.tools, req.tool_choice)
        prompt = fmt.render(req.messages, req.tools if choice != "none" else None, add_generation_prompt=True,
                            **req.chat_template_kwargs)
        params = chat_params(llm, fmt, sampling_params(req, DEFAULT_MAX_TOKENS, response_schema(req.response_format)),
                             tools, choice, reasoning=req.chat_template_kwargs.get("enable_thinking") is not False)
        ids = llm.encode(prompt)
        llm.core.validate(ids, params)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        if req.stream:
            chunks = chat_chunks(llm, fmt, ids, params, rid, model_name, req, usage)
            return StreamingResponse(_sse(chunks), media_type="text/event-stream")
        out = await _final(llm, ids, params, rid, request)
        return chat_response(fmt, out, rid, model_name)

    return app


async def _final(llm: Any, ids: list[int], params: Any, rid: str, request: Request) -> RequestOutput:
    """The finished output; leaving early (client gone) aborts the request in the engine."""
    last = None
    async for out in llm.stream(ids, params, request_id=rid):
        last = out
        if not out.finished and await request.is_disconnected():
            logger.info("client disconnected: aborting %s", rid)
            break
    assert last is not None
    return last


def _error(message: str, status: int) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def usage(out: RequestOutput) -> dict[str, Any]:
    u = out.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.generated_tokens,
            "total_tokens": u.prompt_tokens + u.generated_tokens, "prompt_tokens_details": {"cached_tokens": u.cached_tokens}}


def _stop_reason(out: RequestOutput, params: Any) -> int | None:
    """The stop token that ended the output (vLLM's `stop_reason`), if one did."""
    last = out.token_ids[-1] if out.token_ids else None
    return last if last is not None and last in params.stop_token_ids else None


def _reason(out: RequestOutput) -> str | None:
    return out.finish_reason.value if out.finish_reason else None


def chat_response(fmt: Any, out: RequestOutput, rid: str, model_name: str) -> dict[str, Any]:
    parsed = to_chat_output(fmt, out)
    message: dict[str, Any] = {"role": "assistant", "content": parsed.text if parsed.text or not parsed.tool_calls else None}
    if parsed.reasoning is not None:
        message["reasoning_content"] = parsed.reasoning
    if parsed.tool_calls:
        message["tool_calls"] = tool_calls_json(parsed.tool_calls, rid)
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model_name,
            "choices": [{"index": 0, "message": message, "finish_reason": parsed.finish_reason, "logprobs": None}],
            "usage": usage(out)}


async def _sse(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    async for chunk in chunks:
        yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    yield "data: [DONE]\n\n"


async def _completion_chunks(llm: Any, ids: list[int], params: Any, rid: str, model: str, req: Any) -> AsyncIterator[dict[str, Any]]:
    head = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model}
    async for out in llm.stream(ids, params, request_id=rid):
        yield {**head, "choices": [{"index": 0, "text": out.delta_text, "finish_reason": _reason(out) if out.finished else None}]}
        if out.finished and (req.stream_options or {}).get("include_usage"):
            yield {**head, "choices": [], "usage": usage(out)}


def serve(model: str | None = None, host: str = "127.0.0.1", port: int = 8000, model_name: str | None = None,
          **engine_kwargs: Any) -> None:
    """Load `model` (None = the shipped default) and serve it until interrupted (`agentrt llm serve`)."""
    import uvicorn

    from engine.llm import LLM

    llm = LLM(model, **engine_kwargs)
    name = model_name or ("agentrt-default" if model is None else str(llm.config.model_path.name))
    try:
        uvicorn.run(create_app(llm, name), host=host, port=port, log_level="info")
    finally:
        llm.close()
