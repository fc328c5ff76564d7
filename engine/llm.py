"""The engine's facade: `LLM.generate` for batches and `LLM.stream` for async token streaming.

`LLM()` with no arguments loads the shipped default model. The async API runs engine steps on
one background thread (tensor work releases the GIL, so the event loop stays responsive) and
delivers outputs to each stream's event loop; `generate` steps on the caller's thread. Whoever steps
delivers every output of that step, so `generate` and concurrent streams never lose each other's.

A bad request is refused at the boundary (InvalidRequestError naming the value). If a step raises
anyway, the newest unfinished request (the likeliest culprit: the others were stepping fine before it
came) is failed with RequestFailedError carrying the step's error, and the engine goes on serving the
rest; a persistent fault thus fails requests one by one instead of hanging them all.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

import torch

from engine.config import EngineConfig
from engine.core import EngineCore, StepOutput
from engine.errors import EngineError, InvalidRequestError, ModelLoadError, RequestFailedError
from engine.model.layers import prepare_for_inference
from engine.model.loader import load_model
from engine.sequence import RequestOutput, SamplingParams, Sequence
from engine.structured import GrammarFactory

logger = logging.getLogger(__name__)

Prompt = str | list[int]


class LLM:
    """An in-process inference engine.

    Args:
        model: a Hugging Face-format model directory (config.json + safetensors); None = the
            shipped default model.
        config: an EngineConfig; keyword overrides (e.g. `device="cpu"`, `num_kv_blocks=256`)
            build one when it is omitted.
    Raises ModelLoadError when the model cannot be loaded.
    """

    def __init__(self, model: str | Path | None = None, *, config: EngineConfig | None = None, **kwargs: Any):
        self.config = config if config is not None else EngineConfig(model=model, **kwargs)
        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        path = self.config.model_path
        if not (path / "config.json").exists():
            raise ModelLoadError(f"no config.json in model directory {path}")
        self.device = self.config.resolve_device()
        self.dtype = self.config.resolve_dtype(self.device)
        self.model, self.model_config = load_model(path, dtype=self.dtype, device=self.device)
        self.model.eval()
        if self.config.quantization is not None:
            from engine.quantize import quantize_model_experts

            quantize_model_experts(self.model, self.config.quantization)
        if self.device.type == "cpu":  # packed-panel C kernels for linears and MoE layers; cuBLAS/Triton want rows
            prepare_for_inference(self.model)  # after quantising: FP4 experts have no dense weights left
        self.tokenizer = _load_tokenizer(path)
        detok = self.decode if self.tokenizer is not None else None
        grammars = None
        if self.tokenizer is not None and _has_xgrammar():
            eos = list(self.model_config.eos_token_id or ())
            grammars = GrammarFactory(self.tokenizer, self.model_config.vocab_size, eos)
        self.core = EngineCore(self.model, self.model_config, self.config, detokenize=detok, grammars=grammars)
        self._step_lock = threading.Lock()
        self._listeners: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[RequestOutput | EngineError]]] = {}
        self._texts: dict[str, _StreamText] = {}  # per streamed request: its text so far, decoded incrementally
        self._failed: dict[str, EngineError] = {}  # requests a failing step took down
        self._wake = threading.Event()
        self._driver: threading.Thread | None = None
        self._closed = False
        # Wall seconds the engine loop spent working (steps incl. scheduling, drafting and the model,
        # plus building outputs incl. detokenisation); idle waits excluded. The one figure under
        # which a benchmark can charge this engine and another the same way.
        self.busy_seconds = 0.0

    # ---- text ----------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise InvalidRequestError("this model has no tokenizer.json: pass token ids, not text")
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, token_ids: Seq[int]) -> str:
        if self.tokenizer is None:
            return ""
        return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=False))

    def _token_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.encode(prompt)
        if isinstance(prompt, list | tuple):
            bad = next((t for t in prompt if not isinstance(t, int) or isinstance(t, bool)), None)
            if bad is not None:
                raise InvalidRequestError(f"a token id must be an int, got {bad!r} ({type(bad).__name__})")
            return list(prompt)
        raise InvalidRequestError(f"a prompt is a str or a list of token ids, got {type(prompt).__name__}: {prompt!r:.80}")

    def _check(self, tokens: list[int], params: Any) -> SamplingParams:
        """The boundary checks EngineCore.validate leaves to the facade. Raises InvalidRequestError."""
        if params is None:
            params = SamplingParams()
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError(f"params must be SamplingParams, got {type(params).__name__}: {params!r:.80}")
        bad = next((s for s in params.stop if not isinstance(s, str)), None)
        if bad is not None:
            raise InvalidRequestError(f"stop must be a list of strings, got {bad!r} ({type(bad).__name__}) in {list(params.stop)!r:.80}")
        limit = self.core.max_model_len
        if len(tokens) + params.max_tokens > limit:
            raise InvalidRequestError(f"max_tokens={params.max_tokens} with a {len(tokens)}-token prompt exceeds the context "
                                      f"length {limit}; at most {max(0, limit - len(tokens))} more tokens fit")
        self.core.validate(tokens, params)
        return params

    @staticmethod
    def _batch(prompts: Any) -> list[Prompt]:
        if isinstance(prompts, str) or (isinstance(prompts, list | tuple) and prompts and isinstance(prompts[0], int)):
            return [prompts]  # type: ignore[list-item]
        if not isinstance(prompts, list | tuple):
            raise InvalidRequestError(f"prompts must be a str, a list of token ids, or a list of those; got {type(prompts).__name__}")
        return list(prompts)

    # ---- batch API -----------------------------------------------------------------------
    def generate(
        self, prompts: Prompt | Seq[Prompt], params: SamplingParams | Seq[SamplingParams] | None = None
    ) -> list[RequestOutput]:
        """Generate for every prompt; outputs are in prompt order.

        Raises InvalidRequestError (a ValueError) for a bad prompt or bad parameters; nothing
        is queued in that case.
        """
        batch = self._batch(prompts)
        plist: list[Any] = list(params) if isinstance(params, list | tuple) else [params] * len(batch)
        if len(plist) != len(batch):
            raise InvalidRequestError(f"{len(batch)} prompts but {len(plist)} sampling params")
        ids = [self._token_ids(p) for p in batch]
        plist = [self._check(tokens, p) for tokens, p in zip(ids, plist, strict=True)]
        seqs = [self.core.add(tokens, p) for tokens, p in zip(ids, plist, strict=True)]
        start = time.perf_counter()
        while not all(s.is_finished for s in seqs):
            self._step()
        failed = [self._failed.pop(str(s.request_id)) for s in seqs if str(s.request_id) in self._failed]
        self.busy_seconds += time.perf_counter() - start
        if failed:
            raise failed[0]
        return [self._output(s, []) for s in seqs]

    def _step(self) -> None:
        """One engine step whose outputs go to their streams, whichever thread steps."""
        with self._step_lock:
            try:
                outputs = self.core.step()
            except Exception as exc:
                self._fail_newest(exc)
                return
            self._deliver(outputs)

    def _fail_newest(self, exc: Exception) -> None:
        """A step raised: fail the newest unfinished request (aborted at the next step) and tell its stream."""
        unfinished = [rid for rid, seq in list(self.core._by_id.items()) if not seq.is_finished and rid not in self._failed]
        if not unfinished:
            logger.error("engine step failed with no request to blame", exc_info=exc)
            return
        rid = str(unfinished[-1])
        logger.error("engine step failed; failing request %s", rid, exc_info=exc)
        error = RequestFailedError(f"request {rid} failed in an engine step: {type(exc).__name__}: {exc}")
        self._failed[rid] = error
        self.core.abort(rid)
        listener = self._listeners.get(rid)
        if listener is not None:
            listener[0].call_soon_threadsafe(listener[1].put_nowait, error)

    def _deliver(self, outputs: list[StepOutput]) -> None:
        for step_out in outputs:
            rid = str(step_out.seq.request_id)
            listener = self._listeners.get(rid)
            if listener is None:
                continue
            state = self._texts.setdefault(rid, _StreamText())
            seq = step_out.seq
            prev = state.text
            # the last output (and a stop string's cut) decodes the whole output once; the others only
            # their tail (decoding the whole output every step made streaming quadratic in its length)
            text = None if seq.is_finished or seq.stop_text else state.advance(self.decode, seq.output_token_ids)
            if state.prompt is None:
                state.prompt = seq.token_ids[: seq.num_prompt_tokens]  # once per request, shared by its outputs
            out = self._output(seq, step_out.new_token_ids, prev, text, state.prompt)
            if out.finished:
                self._texts.pop(rid, None)
            listener[0].call_soon_threadsafe(listener[1].put_nowait, out)

    def _output(self, seq: Sequence, new_ids: list[int], prev_text: str = "", text: str | None = None,
                prompt: list[int] | None = None) -> RequestOutput:
        """The request's output so far; `text`: its text when the caller decoded it (else the whole
        output is decoded here); `prompt`: its prompt ids when the caller has them."""
        if text is None:
            text = seq.stop_text if seq.stop_text else self.decode(seq.output_token_ids)
        return RequestOutput(
            request_id=str(seq.request_id),
            prompt_token_ids=prompt if prompt is not None else seq.token_ids[: seq.num_prompt_tokens],
            token_ids=list(seq.output_token_ids),
            text=text,
            finished=seq.is_finished,
            finish_reason=seq.finish_reason,
            usage=seq.usage,
            delta_token_ids=new_ids,
            delta_text=text[len(prev_text) :] if text.startswith(prev_text) else text,
        )

    # ---- chat ----------------------------------------------------------------------------
    @property
    def chat_format(self) -> Any:
        """The model's chat format (engine.chat.ChatFormat), loaded on first use."""
        if getattr(self, "_chat_format", None) is None:
            from engine.chat.session import load_chat_format

            self._chat_format = load_chat_format(self)
        return self._chat_format

    def chat(self, messages: Seq[dict[str, Any]] | Seq[Seq[dict[str, Any]]], params: SamplingParams | None = None, *,
             tools: Seq[dict[str, Any]] | None = None, tool_choice: str | dict[str, Any] | None = "auto",
             **template_kwargs: Any) -> list[Any]:
        """Reply to one conversation (or a list of them) rendered with the model's own chat template.

        Returns engine.chat.session.ChatOutput per conversation: `.text` (no special tokens),
        `.tool_calls` (name, arguments), `.reasoning`. With tools, calls are grammar-constrained in the
        model's own format (every family: agentrt's default, Hermes/Qwen, DeepSeek-V3, gpt-oss harmony).
        `tool_choice` as in OpenAI's API: "auto", "required" (calls only), "none" (tools not shown)
        or `{"type": "function", "function": {"name": N}}` (a call of N). Template flags such as
        `enable_thinking` pass through `template_kwargs` (`enable_thinking=False` also keeps gpt-oss's
        analysis channel out of a constrained reply). Raises InvalidRequestError for a bad
        conversation or tool_choice."""
        from engine.chat.session import chat

        return chat(self, messages, params, tools=tools, tool_choice=tool_choice, **template_kwargs)

    # ---- async API -----------------------------------------------------------------------
    async def stream(
        self, prompt: Prompt, params: SamplingParams | None = None, request_id: str | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Yield a RequestOutput after every step that adds tokens; the last one has finished=True.

        Leaving the loop early (or cancelling) aborts the request and frees its KV. Raises
        InvalidRequestError for a bad request, RequestFailedError if an engine step failed it.
        """
        tokens = self._token_ids(prompt)
        checked = self._check(tokens, params)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[RequestOutput | EngineError] = asyncio.Queue()
        rid = request_id if request_id is not None else f"stream-{uuid.uuid4().hex}"
        if rid in self._listeners:
            raise InvalidRequestError(f"request id {rid!r} is already in use")
        self._listeners[rid] = (loop, queue)  # before add: the first step's output must find it
        try:
            seq = self.core.add(tokens, checked, request_id=rid)
        except BaseException:
            self._listeners.pop(rid, None)
            raise
        self._ensure_driver()
        self._wake.set()
        try:
            while True:
                out = await queue.get()
                if isinstance(out, EngineError):
                    raise out
                yield out
                if out.finished:
                    return
        finally:
            self._listeners.pop(str(seq.request_id), None)
            self._failed.pop(str(seq.request_id), None)
            self._texts.pop(str(seq.request_id), None)
            if not seq.is_finished:
                self.core.abort(str(seq.request_id))
                self._wake.set()

    async def complete(self, prompt: Prompt, params: SamplingParams | None = None) -> RequestOutput:
        """Await one request's final output."""
        last = None
        async for out in self.stream(prompt, params):
            last = out
        assert last is not None
        return last

    def _ensure_driver(self) -> None:
        if self._driver is None or not self._driver.is_alive():
            self._driver = threading.Thread(target=self._drive, name="engine-driver", daemon=True)
            self._driver.start()

    def _drive(self) -> None:
        while not self._closed:
            if not self.core.has_unfinished():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            start = time.perf_counter()
            try:
                self._step()
            except Exception:  # a fault in delivery itself: log it, keep the thread alive
                logger.exception("engine driver error")
            self.busy_seconds += time.perf_counter() - start

    def preload_drafts(self, documents: Seq[Seq[int]]) -> int:
        """Seed the suffix drafter's global tree with earlier outputs (token ids, each with a few
        tokens of its prompt before it), as a server that has already served such requests holds
        them. Returns how many were indexed. Raises InvalidRequestError, indexing nothing, when the
        engine has no "suffix" drafter or a document is not a list of token ids of the model's
        vocabulary (a draft token outside it would fail every request whose context matched it)."""
        docs = [self._token_ids(list(d)) for d in documents]
        vocab = self.core.model_config.vocab_size
        for i, doc in enumerate(docs):
            bad = next((t for t in doc if not 0 <= t < vocab), None)
            if bad is not None:
                raise InvalidRequestError(f"document {i}: token id {bad} is outside the vocabulary [0, {vocab})")
        with self._step_lock:  # the step thread owns the tree
            try:
                return self.core.speculator.preload(docs)
            except ValueError as exc:
                raise InvalidRequestError(str(exc)) from exc

    def draft_history(self) -> list[list[int]]:
        """The suffix drafter's global tree as token-id documents, oldest first: the outputs of the
        requests this engine finished (each with the last tokens of its prompt) and what was
        preloaded. Save it (any list-of-int-lists format) and `preload_drafts` it into a new
        engine to start warm after a restart. Raises InvalidRequestError without a "suffix" drafter."""
        with self._step_lock:
            try:
                return self.core.speculator.history()
            except ValueError as exc:
                raise InvalidRequestError(str(exc)) from exc

    # ---- introspection -------------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        """Prefix-cache counters, KV usage and step totals."""
        sched = self.core.scheduler
        radix = sched.radix
        return {
            "num_steps": self.core.stats.num_steps,
            "num_tokens": self.core.stats.num_tokens,
            "device_seconds": self.core.stats.device_seconds,
            "busy_seconds": self.busy_seconds,
            "num_preemptions": sched.num_preemptions,
            "kv_blocks_total": sched.pool.num_blocks,
            "kv_blocks_free": sched.pool.num_free_blocks,
            "prefix_query_tokens": radix.num_query_tokens if radix else 0,
            "prefix_hit_tokens": radix.num_hit_tokens if radix else 0,
        }

    def close(self) -> None:
        self._closed = True
        self._wake.set()


class _StreamText:
    """Incremental detokenization of one streamed output (the scheme of HF's TextStreamer and vLLM):
    each step decodes only the tokens from `prefix` on, twice, with and without the new ones, and
    appends the difference once it does not end in an incomplete character (U+FFFD: a UTF-8 sequence
    split across tokens waits for its last byte). Decoding a few tokens before the new ones keeps
    tokenizers that render a token by its neighbours (leading spaces) right. `text` is always a
    prefix of the whole output's decode; `LLM._deliver` decodes the whole output at the end, the
    reference this is tested against (tests/engine/chat/test_stream_detokenize.py)."""

    __slots__ = ("prefix", "read", "text", "prompt")
    CONTEXT = 5  # tokens decoded before the unread ones

    def __init__(self) -> None:
        self.prefix = 0
        self.read = 0
        self.text = ""
        self.prompt: list[int] | None = None  # the request's prompt ids, copied once for all its outputs

    def advance(self, decode: Callable[[Seq[int]], str], ids: Seq[int]) -> str:
        """The text of `ids` (the whole output so far, grown since the last call), minus any
        incomplete last character."""
        before = decode(ids[self.prefix : self.read])
        after = decode(ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd") and after.startswith(before):
            self.text += after[len(before) :]
            self.read = len(ids)
            self.prefix = max(0, self.read - self.CONTEXT)
        return self.text


def _load_tokenizer(path: Path) -> Any:
    file = path / "tokenizer.json"
    if not file.exists():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(file))


def _has_xgrammar() -> bool:
    import importlib.util

    return importlib.util.find_spec("xgrammar") is not None
