"""A minimal engine demo: `python -m engine.demo "message"` answers as the airline agent."""

from __future__ import annotations

import sys
import time

from engine import LLM, SamplingParams
from engine.config import DEFAULT_MODEL_DIR
from engine.tokenizer import ChatTokenizer


def main(argv: list[str]) -> None:
    message = " ".join(argv) or "Hi, I need to cancel my reservation."
    llm = LLM()
    tok = ChatTokenizer(DEFAULT_MODEL_DIR)
    prompt = tok.encode_chat([{"role": "system", "content": "# Airline Agent Policy"}, {"role": "user", "content": message}])
    start = time.perf_counter()
    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=96, stop_token_ids=(tok.end_id,)))[0]
    sys.stdout.write(f"user: {message}\nagent: {out.text.removesuffix('<|end|>')}\n")
    sys.stdout.write(f"[{out.usage.generated_tokens} tokens in {time.perf_counter() - start:.2f}s]\n")


if __name__ == "__main__":
    main(sys.argv[1:])
