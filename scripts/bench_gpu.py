#!/usr/bin/env python
"""Benchmark 4 -- a BERT-base-size model (built from a config: speed does not depend on the weights) on a GPU, bf16:
training pairs/s and encoding docs/s, sentence-transformers' stock paths vs gte-st's, with MFU against the GPU's
bf16 peak.

    python scripts/bench_gpu.py --device cuda                       # the real run (BERT-base, len 128, batch 256)
    python scripts/bench_gpu.py --device cpu --hidden 64 --layers 2 --batch-size 8 --steps 2 --docs 32 --max-len 32
                                                                    # a smoke run of the same code on the CPU

Measured, in one process on the same SciFact title -> abstract pairs:

* training steps (forward + backward + AdamW) under ``torch.autocast(bf16)``: stock ``MultipleNegativesRankingLoss``
  vs ``gte_st.losses.NormalizedMSELoss``, same batch, same max length;
* encoding the abstracts (max length ``--encode-max-len``): stock ``model.encode`` fp32, stock under bf16 autocast,
  ``gte_st.encoding.encode(precision="bf16")``;
* training at equal settings through the Trainers (``--train-arms``, the arms of scripts/bench_train_throughput.py on
  the same model, each in a fresh process): stock ``SentenceTransformerTrainer`` + MNRL (``bf16=True``) against
  gte-st's ``GTETrainer`` with its defaults (length-grouped batches, texts tokenised once) on the same loss and with
  ``NormalizedMSELoss``, and the cached pair (stock ``CachedMultipleNegativesRankingLoss`` with
  ``mini_batch_num_tokens`` vs ``CachedNormalizedMSELoss``), on short (SNLI) and long-tailed (docstrings + SciFact
  abstracts) pairs: pairs/s, real tokens/s, padding fraction and MFU (padded tokens).

MFU counts padded tokens: 6 x non-embedding parameters x tokens (+ attention 12 x layers x hidden x len^2 per
sequence) for training, a third of that for encoding, divided by time and by the peak (``--peak-tflops``, or a
known value for H100 / H200 / A100 from the device name).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}


def build_bert(path: Path, hidden: int, layers: int, max_len: int) -> Path:
    """A randomly initialised BERT of the given size with the offline MiniLM copy's (bert-base-uncased) tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    import gte_st

    tokenizer = AutoTokenizer.from_pretrained(gte_st.default_base_model())
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=4 * hidden,
        max_position_embeddings=max(512, max_len),
    )
    BertModel(config).save_pretrained(path)
    return path


def flops_per_sequence(model, seq_len: int, hidden: int, layers: int, training: bool) -> float:
    """Forward FLOPs of one padded sequence (x3 for forward + backward when training)."""
    embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    dense = sum(p.numel() for p in model.parameters()) - embedding
    forward = 2 * dense * seq_len + 4 * layers * hidden * seq_len**2
    return forward * (3 if training else 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-len", type=int, default=128, help="training max length")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps (after 3 warm-up steps)")
    parser.add_argument("--docs", type=int, default=5183, help="abstracts to encode")
    parser.add_argument("--encode-max-len", type=int, default=512)
    parser.add_argument("--encode-batch-size", type=int, default=128)
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak (default: from GPU name)")
    parser.add_argument(
        "--train-arms", nargs="*", default=["st-mnrl", "gte-mnrl-plain", "gte-mnrl", "gte-mse", "st-cached-mnrl",
                                            "gte-cached-mse"],
        help="equal-settings Trainer arms of scripts/bench_train_throughput.py (none: skip)",
    )  # fmt: skip
    parser.add_argument("--train-data", nargs="+", default=["short", "long"], choices=["short", "long"])
    parser.add_argument("--cached-batch-size", type=int, default=None, help="cached arms' batch (default 4x batch)")
    parser.add_argument("--train-repeats", type=int, default=1, help="runs of every Trainer arm, interleaved")
    parser.add_argument("--data-root", default=str(DATA))
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    import gte_st
    from gte_st.corpus import read_corpus
    from gte_st.encoding import encode
    from gte_st.hardware import run_record
    from gte_st.losses import NormalizedMSELoss

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    header = {
        **run_record(),
        "device": name,
        "peak_bf16_tflops": peak,
        "config": {k: v for k, v in vars(args).items() if k not in ("data_root", "output")},
    }
    print(json.dumps(header, indent=1))

    # Titles and texts apart: read_corpus's own "title text" strips the title (15 SciFact titles end in spaces).
    scifact = Path(args.data_root) / "beir_scifact"
    _, titles = read_corpus(scifact, text_field="title", title_field=None)
    _, texts = read_corpus(scifact, title_field=None)
    pairs = [(title, text) for title, text in zip(titles, texts) if title and text]
    docs = [f"{title} {text}".strip() for title, text in zip(titles, texts)][: args.docs]

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = build_bert(Path(tmp) / "bert", args.hidden, args.layers, max(args.max_len, args.encode_max_len))

        # ---- training throughput ----
        for loss_name, loss_cls in (
            ("st-mnrl", MultipleNegativesRankingLoss),
            ("gte-normalized-mse", NormalizedMSELoss),
        ):
            model = gte_st.build_model(str(path), max_seq_length=args.max_len, device=str(device))
            loss = loss_cls(model)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
            model.train()
            tokens, steps_done, elapsed = 0, 0, 0.0
            for step in range(3 + args.steps):
                batch = [pairs[(step * args.batch_size + i) % len(pairs)] for i in range(args.batch_size)]
                features = [
                    {k: v.to(device) if hasattr(v, "to") else v for k, v in model.preprocess(list(col)).items()}
                    for col in zip(*batch)
                ]
                labels = torch.zeros(args.batch_size, device=device)
                sync()
                start = time.perf_counter()
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    value = loss(features, labels)
                value.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                sync()
                if step >= 3:
                    elapsed += time.perf_counter() - start
                    steps_done += 1
                    tokens += sum(int(f["input_ids"].numel()) for f in features)
            sequences = steps_done * args.batch_size * 2  # anchor + positive per pair
            seq_len = round(tokens / sequences)  # padded length, averaged over batches
            flops = flops_per_sequence(model, seq_len, args.hidden, args.layers, training=True) * sequences
            results[loss_name] = {
                "pairs_per_s": steps_done * args.batch_size / elapsed,
                "padded_tokens_per_s": tokens / elapsed,
                "mfu": flops / elapsed / (peak * 1e12) if peak else None,
                "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            }
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            del model, loss, optimizer

        # ---- encoding throughput ----
        model = gte_st.build_model(str(path), max_seq_length=args.encode_max_len, device=str(device))
        paths = {
            "st-encode-fp32": lambda texts: model.encode(texts, batch_size=args.encode_batch_size),
            "st-encode-autocast": lambda texts: _autocast(model, texts, args.encode_batch_size, device),
            "gte-encode-bf16": lambda texts: encode(model, texts, batch_size=args.encode_batch_size, precision="bf16"),
        }
        lengths = model.tokenizer(docs, truncation=True, max_length=args.encode_max_len)["input_ids"]
        real_tokens = sum(len(x) for x in lengths)
        for path_name, fn in paths.items():
            fn(docs[: min(len(docs), 2 * args.encode_batch_size)])  # warm-up
            sync()
            start = time.perf_counter()
            fn(docs)
            sync()
            elapsed = time.perf_counter() - start
            avg = real_tokens / len(docs)
            flops = flops_per_sequence(model, int(avg), args.hidden, args.layers, False) * len(docs)
            results[path_name] = {
                "docs_per_s": len(docs) / elapsed,
                "mfu_unpadded_tokens": flops / elapsed / (peak * 1e12) if peak else None,
            }

        # ---- training at equal settings, through the Trainers (each arm in a fresh process) ----
        trainer_results = {}
        if args.train_arms:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from bench_train_throughput import ARMS, build_data, run_arm, summarize

            files = build_data(Path(args.data_root), Path(tmp))
            runs = {shape: {arm: [] for arm in args.train_arms} for shape in args.train_data}
            bert = gte_st.build_model(str(path))
            embedding = sum(p.numel() for n, p in bert.named_parameters() if "embeddings" in n)
            dense = sum(p.numel() for p in bert.parameters()) - embedding
            del bert
            for _ in range(args.train_repeats):
                for shape in args.train_data:
                    for arm in args.train_arms:
                        cached = ARMS[arm].get("cached", False)
                        config = {
                            **ARMS[arm], "arm": arm, "data": shape, "pairs_file": str(files[shape]),
                            "batch": (args.cached_batch_size or 4 * args.batch_size) if cached else args.batch_size,
                            "max_len": args.max_len, "steps": args.steps, "warmup": 3, "model": str(path),
                            "device": str(device),
                        }  # fmt: skip
                        if (r := run_arm(config)) is not None:
                            runs[shape][arm].append(r)
            trainer_results = summarize(runs)
            for arms in trainer_results.values():
                for arm, r in arms.items():
                    # 6 x dense parameters per padded token (forward + backward) + attention, cached arms x4/3
                    # (their first, gradient-free pass), as for the loop arms above
                    per_token = 6 * dense + 12 * args.layers * args.hidden * r["mean_padded_length"]
                    flops = per_token * r["padded_tokens_per_s"] * (4 / 3 if ARMS[arm].get("cached") else 1)
                    r["mfu"] = flops / (peak * 1e12) if peak else None

    base_train, base_enc = results["st-mnrl"]["pairs_per_s"], results["st-encode-fp32"]["docs_per_s"]
    for key, r in results.items():
        rate = r.get("pairs_per_s") or r.get("docs_per_s")
        r["ratio_vs_stock"] = rate / (base_train if "pairs_per_s" in r else base_enc)
        mfu = r.get("mfu") or r.get("mfu_unpadded_tokens")
        print(
            f"{key:<22} {rate:>10.1f} {'pairs/s' if 'pairs_per_s' in r else 'docs/s '}  x{r['ratio_vs_stock']:.2f}"
            + (f"  MFU {100 * mfu:.1f}%" if mfu else "")
        )
    for shape, arms in trainer_results.items():
        for arm, r in arms.items():
            mfu = f"  MFU {100 * r['mfu']:.1f}%" if r.get("mfu") else ""
            print(f"trainer {shape:<5} {arm:<15} {r['pairs_per_s']:>10.1f} pairs/s  x{r.get('x_stock', float('nan')):.2f}"
                  f"  padding {r['padding_fraction']:.2f}{mfu}")  # fmt: skip
    if args.output:
        Path(args.output).write_text(
            json.dumps({**header, "results": results, "trainer_results": trainer_results}, indent=2) + "\n"
        )
    return 0


def _autocast(model, texts, batch_size, device):
    import torch

    with torch.autocast(device.type, dtype=torch.bfloat16):
        return model.encode(texts, batch_size=batch_size)


if __name__ == "__main__":
    sys.exit(main())
