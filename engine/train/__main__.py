"""`python -m engine.train` — train the tokenizer and the default model, then evaluate it.

    python -m engine.train --out engine/assets/default_model --steps 1200 --device cpu
    python -m engine.train --out DIR --eval-only
    python -m engine.train --draft --out engine/assets/draft_model --tokenizer-from engine/assets/default_model
    python -m engine.train --finetune-from DIR --out DIR2 --steps 100   # stage 2 (docs/model.md)
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from engine.tokenizer import ChatTokenizer
from engine.train.data import AirlineData, load_airline, render_conversations, stdlib_texts
from engine.train.evaluate import perplexity, skill_figures, tool_call_rate
from engine.train.loop import Batches, TrainConfig, default_model_config, draft_model_config, train
from engine.train.tokenizer_train import train_tokenizer


def main() -> None:
    d = TrainConfig()
    ap = argparse.ArgumentParser(prog="python -m engine.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="model directory to write (config, weights, tokenizer)")
    ap.add_argument("--data-dir", type=Path, default=None, help="public data dir (default $AGENTRT_DATA_DIR or ../shared/data)")
    ap.add_argument("--steps", type=int, default=None, help=f"default {d.steps} (stage 2: 100)")
    ap.add_argument("--batch-size", type=int, default=None, help=f"default {d.batch_size} (stage 2: 4)")
    ap.add_argument("--seq-len", type=int, default=d.seq_len)
    ap.add_argument("--lr", type=float, default=None, help=f"peak learning rate, default {d.lr} (stage 2: 1e-3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--tokenizer-from", type=Path, default=None, help="copy tokenizer.json from this model dir (draft models share the target's)")
    ap.add_argument("--corpus", type=Path, default=None, help="pre-encoded corpus (.pt); written by --save-corpus")
    ap.add_argument("--save-corpus", type=Path, default=None, help="encode the corpus, save it here and stop")
    ap.add_argument("--draft", action="store_true", help="train the small draft model (speculative decoding) instead")
    ap.add_argument("--threads", type=int, default=d.threads, help="CPU threads for training")
    ap.add_argument("--finetune-from", type=Path, default=None,
                    help="stage 2: fine-tune this model dir on synthetic + recorded conversations (engine/train/finetune.py)")
    ap.add_argument("--synthetic", type=int, default=3000, help="stage 2: synthetic conversations (and extraction examples) to generate")
    ap.add_argument("--fresh", type=float, default=0.6, help="stage 2: fraction of synthetic users given new ids")
    ap.add_argument("--invented-names", type=float, default=0.0, help="stage 2: fraction of extraction names invented")
    ap.add_argument("--suffix-len", type=int, default=None, help="stage 2: tokens trained after the shared system turn (default 512)")
    ap.add_argument("--plain-every", type=int, default=None, help="stage 2: every N-th step is a plain extraction/code batch (default 3)")
    ap.add_argument("--synthetic-fraction", type=float, default=None, help="stage 2: share of synthetic (vs recorded) conversations (default 0.65)")
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--skip-eval", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = load_airline(args.data_dir) if args.corpus is None else None
    if not args.eval_only:
        if args.finetune_from is not None:
            _finetune(args, data or load_airline(args.data_dir))
        else:
            _train(args, data)
    if not args.skip_eval:
        data = data or load_airline(args.data_dir)
        figures = perplexity(args.out, data, args.seq_len) | tool_call_rate(args.out, data, args.seq_len) | skill_figures(args.out, data, args.data_dir)
        figures["held_out_tasks"] = data.held_out_tasks  # type: ignore[assignment]
        (args.out / "eval.json").write_text(json.dumps(figures, indent=2) + "\n")
        logging.info("eval: %s", json.dumps(figures))


def _train(args: argparse.Namespace, data: AirlineData | None) -> None:
    if args.corpus is not None:
        import torch

        corpus = torch.load(args.corpus)
        airline_ids, stdlib_ids = corpus["airline"], corpus["stdlib"]
        tok = ChatTokenizer(args.out)
    else:
        assert data is not None
        airline_texts = render_conversations(data.train, data.tools)
        code = stdlib_texts()
        if args.tokenizer_from is not None and not (args.out / "tokenizer.json").exists():
            args.out.mkdir(parents=True, exist_ok=True)
            shutil.copy(args.tokenizer_from / "tokenizer.json", args.out / "tokenizer.json")
        if not (args.out / "tokenizer.json").exists():
            train_tokenizer(airline_texts + code, args.vocab_size, args.out)
        tok = ChatTokenizer(args.out)
        eos = tok.special["<|eos|>"]
        airline_ids = [tok.encode(t) for t in airline_texts]
        stdlib_ids = [i for text in code for i in tok.encode(text) + [eos]]
        if args.save_corpus is not None:
            import torch

            torch.save({"airline": airline_ids, "stdlib": stdlib_ids}, args.save_corpus)
            raise SystemExit(0)
    d = TrainConfig()
    cfg = TrainConfig(steps=args.steps or d.steps, batch_size=args.batch_size or d.batch_size, seq_len=args.seq_len, lr=args.lr or d.lr,
                      seed=args.seed, device=args.device, threads=args.threads)
    logging.info("corpus: %d airline conversations (%d tokens), stdlib %d tokens", len(airline_ids), sum(map(len, airline_ids)), len(stdlib_ids))
    make_config = draft_model_config if args.draft else default_model_config
    log = train(make_config(tok.vocab_size, tok.end_id), Batches(airline_ids, stdlib_ids, cfg), cfg, args.out)
    (args.out / "train_log.json").write_text(json.dumps(log, indent=2, default=str) + "\n")


def _finetune(args: argparse.Namespace, data: AirlineData) -> None:
    from engine.train.extraction import extraction_examples
    from engine.train.finetune import FinetuneBatches, FinetuneConfig, encode_data, finetune
    from engine.train.synthetic import synthetic_conversations

    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (args.finetune_from / name).exists() and args.finetune_from.resolve() != args.out.resolve():
            shutil.copy(args.finetune_from / name, args.out / name)
    tok = ChatTokenizer(args.out if (args.out / "tokenizer.json").exists() else args.tokenizer_from or args.finetune_from)
    system = data.train[0][0]["content"]
    synthetic = synthetic_conversations(args.synthetic, "train", system, seed=args.seed, data_dir=args.data_dir, fresh=args.fresh)
    extraction = [e.messages() for e in extraction_examples(args.synthetic, "train", seed=args.seed, invented=args.invented_names)]
    encoded = encode_data(tok, system, data.tools, synthetic, data.train, extraction, stdlib_texts(500_000))
    given = {k: v for k, v in (("steps", args.steps), ("lr", args.lr), ("batch_size", args.batch_size),
                               ("suffix_len", args.suffix_len), ("plain_every", args.plain_every),
                               ("synthetic_fraction", args.synthetic_fraction)) if v is not None}
    cfg = FinetuneConfig(seed=args.seed, threads=args.threads, **given)
    logging.info("fine-tuning from %s: prefix %d tokens, %d synthetic + %d recorded conversations, %d extraction tokens",
                 args.finetune_from, len(encoded.prefix), len(encoded.synthetic), len(encoded.recorded), len(encoded.extraction))
    log = finetune(args.finetune_from, args.out, FinetuneBatches(encoded, cfg), cfg)
    (args.out / "finetune_log.json").write_text(json.dumps(log, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
