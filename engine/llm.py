"""The engine's facade: `LLM.generate` for batches and `LLM.stream` for async token streaming.

`LLM()` with no arguments loads the shipped default model. The async API runs engine steps on
one background thread (tensor work releases the GIL, so the event loop stays responsive) and
delivers outputs to each stream's event loop; `generate` steps on the caller's thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

import torch

from engine.config import EngineConfig
from engine.core import EngineCore, StepOutput
from engine.errors import InvalidRequestError, ModelLoadError
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
            from engine.moe.quantized import quantize_model_experts

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
        self._listeners: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[RequestOutput]]] = {}
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
            return list(prompt)
        raise InvalidRequestError(f"a prompt is a str or a list of token ids, got {type(prompt).__name__}")

    # ---- batch API -----------------------------------------------------------------------
    def generate(
        self, prompts: Prompt | Seq[Prompt], params: SamplingParams | Seq[SamplingParams] | None = None
    ) -> list[RequestOutput]:
        """Generate for every prompt; outputs are in prompt order.

        Raises InvalidRequestError (a ValueError) for a bad prompt or bad parameters; nothing
        is queued in that case.
        """
        single = isinstance(prompts, str) or (isinstance(prompts, list) and bool(prompts) and isinstance(prompts[0], int))
        batch: list[Prompt] = [prompts] if single else list(prompts)  # type: ignore[list-item, arg-type]
        plist: list[SamplingParams] = list(params) if isinstance(params, list | tuple) else [params or SamplingParams()] * len(batch)  # type: ignore[list-item]
        if len(plist) != len(batch):
            raise InvalidRequestError(f"{len(batch)} prompts but {len(plist)} sampling params")
        ids = [self._token_ids(p) for p in batch]
        for tokens, p in zip(ids, plist, strict=True):
            self.core.validate(tokens, p)
        seqs = [self.core.add(tokens, p) for tokens, p in zip(ids, plist, strict=True)]
        start = time.perf_counter()
        while not all(s.is_finished for s in seqs):
            self._step()
        outs = [self._output(s, []) for s in seqs]
        self.busy_seconds += time.perf_counter() - start
        return outs

    def _step(self) -> list[StepOutput]:
        with self._step_lock:
            return self.core.step()

    def _output(self, seq: Sequence, new_ids: list[int], prev_text: str = "") -> RequestOutput:
        text = seq.stop_text if seq.stop_text else self.decode(seq.output_token_ids)
        return RequestOutput(
            request_id=str(seq.request_id),
            prompt_token_ids=seq.token_ids[: seq.num_prompt_tokens],
            token_ids=list(seq.output_token_ids),
            text=text,
            finished=seq.is_finished,
            finish_reason=seq.finish_reason,
            usage=seq.usage,
            delta_token_ids=new_ids,
            delta_text=text[len(prev_text) :] if text.startswith(prev_text) else text,
        )

    # ---- async API -----------------------------------------------------------------------
    async def stream(
        self, prompt: Prompt, params: SamplingParams | None = None, request_id: str | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Yield a RequestOutput after every step that adds tokens; the last one has finished=True.

        Leaving the loop early (or cancelling) aborts the request and frees its KV.
        """
        tokens = self._token_ids(prompt)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        seq = self.core.add(tokens, params or SamplingParams(), request_id=request_id)
        self._listeners[str(seq.request_id)] = (loop, queue)
        self._ensure_driver()
        self._wake.set()
        try:
            while True:
                out = await queue.get()
                yield out
                if out.finished:
                    return
        finally:
            self._listeners.pop(str(seq.request_id), None)
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
        texts: dict[str, str] = {}
        while not self._closed:
            if not self.core.has_unfinished():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            start = time.perf_counter()
            try:
                outputs = self._step()
            except Exception:  # a bug in the engine: fail every open stream, keep the thread alive
                logger.exception("engine step failed")
                continue
            for step_out in outputs:
                rid = str(step_out.seq.request_id)
                out = self._output(step_out.seq, step_out.new_token_ids, texts.get(rid, ""))
                texts[rid] = out.text
                if out.finished:
                    texts.pop(rid, None)
                listener = self._listeners.get(rid)
                if listener is not None:
                    listener[0].call_soon_threadsafe(listener[1].put_nowait, out)
            self.busy_seconds += time.perf_counter() - start

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


def _load_tokenizer(path: Path) -> Any:
    file = path / "tokenizer.json"
    if not file.exists():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(file))


def _has_xgrammar() -> bool:
    import importlib.util

    return importlib.util.find_spec("xgrammar") is not None
