"""A minimal engine demo: `python -m engine.demo` generates a reply with the shipped model."""

from __future__ import annotations

import sys
import time

from engine import LLM, SamplingParams


def main(argv: list[str]) -> None:
    prompt = " ".join(argv) or "Hello, I need to change my flight reservation."
    llm = LLM()
    start = time.perf_counter()
    out = llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=64))[0]
    took = time.perf_counter() - start
    sys.stdout.write(f"{out.text}\n\n[{out.usage.generated_tokens} tokens in {took:.2f}s]\n")


if __name__ == "__main__":
    main(sys.argv[1:])
