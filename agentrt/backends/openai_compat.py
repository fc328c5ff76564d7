"""`OpenAIEngine`: the runtime's EngineClient over any OpenAI-compatible endpoint (vLLM, SGLang,
agentrt's own `agentrt llm serve`).

The runtime works in token ids (sessions keep each turn's exact ids so the server's prefix cache
hits), so requests go to `/v1/completions` with the prompt as token ids, and the model's tokenizer
and chat template are read locally (`tokenizer`: a model or tokenizer directory; default: the
shipped model's). vLLM's extra parameters carry what the OpenAI API lacks: `stop_token_ids`,
`return_token_ids`, `skip_special_tokens`, `ignore_eos`. A session-id header keeps a conversation
on one replica; pins and steps-to-execution hints have no remote equivalent and become no-ops
(logged once). 429s and 5xx responses are retried with exponential backoff.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from agentrt.backends.local_tokenizer import LocalTokenizer
from agentrt.engine_client import LLMRequest, LLMResponse
from agentrt.errors import AgentrtError
from agentrt.types import Usage

logger = logging.getLogger(__name__)
SESSION_HEADER = "X-Session-ID"
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class RemoteEngineError(AgentrtError):
    """The OpenAI-compatible endpoint failed (after retries) or answered something unusable."""


@dataclass(slots=True)
class OpenAIEngineConfig:
    """Where and how to reach the endpoint. `base_url` ends before `/v1` or with it.

    `from_env` reads AGENTRT_LLM_URL, AGENTRT_LLM_MODEL and AGENTRT_LLM_API_KEY. Raises ValueError
    on out-of-range values."""

    base_url: str
    model: str
    api_key: str | None = None
    tokenizer: str | Path | None = None  # local model/tokenizer dir for ids and the chat template
    timeout_s: float = 120.0
    max_retries: int = 4
    backoff_s: float = 0.5  # first retry delay; doubles each retry
    kv_capacity_tokens: int = 1 << 20  # admission hints for the GPU pool (the server enforces its own)
    max_batch: int = 64
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        self.base_url = self.base_url.rstrip("/").removesuffix("/v1")
        if not self.model:
            raise ValueError("model must name the served model (see GET /v1/models)")
        if self.timeout_s <= 0 or self.max_retries < 0 or self.backoff_s < 0:
            raise ValueError(f"timeout_s > 0, max_retries >= 0, backoff_s >= 0; got {self.timeout_s}, {self.max_retries}, {self.backoff_s}")

    @classmethod
    def from_env(cls, url: str | None = None, model: str | None = None, **kwargs: Any) -> OpenAIEngineConfig | None:
        """A config from arguments, falling back to the environment; None when no URL is set."""
        url = url or os.environ.get("AGENTRT_LLM_URL")
        if not url:
            return None
        model = model or os.environ.get("AGENTRT_LLM_MODEL") or "agentrt-default"
        return cls(url, model, api_key=os.environ.get("AGENTRT_LLM_API_KEY"), **kwargs)


class OpenAIEngine(LocalTokenizer):
    """EngineClient over an OpenAI-compatible HTTP endpoint (see the module docstring)."""

    def __init__(self, base_url: str | OpenAIEngineConfig, model: str | None = None, **kwargs: Any) -> None:
        from engine.config import DEFAULT_MODEL_DIR

        self.config = base_url if isinstance(base_url, OpenAIEngineConfig) else OpenAIEngineConfig(base_url, model or "", **kwargs)
        self.model_name = self.config.model
        self._load_tokenizer(Path(self.config.tokenizer or DEFAULT_MODEL_DIR))
        self._http: Any = None  # an httpx.AsyncClient, made in (and bound to) the loop that first posts
        self._sessions: dict[str, list[int]] = {}  # pinned prefixes by session key: affinity, not caching
        self._noticed = False

    async def generate(self, request: LLMRequest) -> LLMResponse:
        body: dict[str, Any] = {
            "model": self.model_name, "prompt": request.prompt_ids, "max_tokens": request.max_tokens,
            "temperature": request.temperature, "stop_token_ids": request.stop_token_ids, "ignore_eos": request.ignore_eos,
            "return_token_ids": True, "skip_special_tokens": False, "stream": False,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.json_schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": request.json_schema}}
        if request.structural_tag is not None:  # vLLM's (and agentrt's server's) structured_outputs
            body["structured_outputs"] = {"structural_tag": json.dumps(request.structural_tag)}
        start = time.perf_counter()
        data = await self._post("/v1/completions", body, self._session_of(request.prompt_ids))
        latency = time.perf_counter() - start
        return self._response(data, request, latency)

    def _response(self, data: dict[str, Any], request: LLMRequest, latency: float) -> LLMResponse:
        try:
            choice = data["choices"][0]
            text = choice.get("text") or ""
            ids = choice.get("token_ids")
            ids = list(ids) if ids is not None else self.encode(text)
            if choice.get("token_ids") is None and isinstance(choice.get("stop_reason"), int):
                ids.append(int(choice["stop_reason"]))  # servers leave the stop token out of the text
                text += self.decode(ids[-1:])
            u = data.get("usage") or {}
            usage = Usage(prompt_tokens=int(u.get("prompt_tokens", len(request.prompt_ids))),
                          cached_tokens=int((u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
                          generated_tokens=int(u.get("completion_tokens", len(ids))))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise RemoteEngineError(f"unexpected completion response from {self.config.base_url}: {str(data)[:200]}") from exc
        usage.prefill_tokens_computed = usage.prompt_tokens - usage.cached_tokens
        reason = choice.get("finish_reason") or "stop"
        return LLMResponse(token_ids=ids, text=text, finish_reason=reason, usage=usage, ttft=latency)

    async def _post(self, path: str, body: dict[str, Any], session: str | None) -> dict[str, Any]:
        import httpx

        headers = {SESSION_HEADER: session} if session else {}
        delay = self.config.backoff_s
        http = self._client()
        for attempt in range(self.config.max_retries + 1):
            try:
                resp = await http.post(path, json=body, headers=headers)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                if attempt == self.config.max_retries:
                    raise RemoteEngineError(f"POST {self.config.base_url}{path} failed: {type(exc).__name__}: {exc}") from exc
            else:
                if resp.status_code < 400:
                    return dict(resp.json())
                if resp.status_code not in RETRY_STATUS or attempt == self.config.max_retries:
                    raise RemoteEngineError(f"POST {self.config.base_url}{path} -> {resp.status_code}: {resp.text[:300]}")
                delay = max(delay, _retry_after(resp))
            logger.warning("retrying %s in %.2fs (attempt %d of %d)", path, delay, attempt + 1, self.config.max_retries)
            await anyio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _client(self) -> Any:
        import httpx

        if self._http is None:
            auth = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
            self._http = httpx.AsyncClient(base_url=self.config.base_url, timeout=self.config.timeout_s,
                                           headers={**auth, **self.config.headers})
        return self._http

    def _session_of(self, prompt: list[int]) -> str | None:
        """The session whose pinned prefix is the longest prefix of `prompt` (affinity header)."""
        best, best_len = None, 0
        for key, ids in self._sessions.items():
            if best_len < len(ids) <= len(prompt) and prompt[: len(ids)] == ids:
                best, best_len = key, len(ids)
        return best

    def pin(self, key: str, token_ids: list[int], ttl: float | None) -> None:
        self._notice()
        self._sessions[key] = list(token_ids)

    def unpin(self, key: str) -> None:
        self._sessions.pop(key, None)

    def hint(self, key: str, token_ids: list[int], steps: float) -> None:
        self._notice()

    def unhint(self, key: str) -> None:
        return None

    def set_program_priority(self, program_id: str, priority: int) -> None:
        """A no-op: the OpenAI API has no request priorities (requests are served as the server orders them)."""
        return None

    def _notice(self) -> None:
        if not self._noticed:
            self._noticed = True
            logger.info("%s: KV pins and prefetch hints are not part of the OpenAI API; they are no-ops "
                        "(sessions still keep affinity through the %s header)", self.config.base_url, SESSION_HEADER)

    def kv_capacity_tokens(self) -> int:
        return self.config.kv_capacity_tokens

    def max_batch(self) -> int:
        return self.config.max_batch

    async def aclose(self) -> None:
        """Close the HTTP client (call it from the event loop that used the engine)."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None


def _retry_after(resp: Any) -> float:
    try:
        return float(resp.headers.get("retry-after", 0))
    except ValueError:
        return 0.0
