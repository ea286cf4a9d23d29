"""Benchmark: MacTuner's MLX training vs mlx-lm's LoRA trainer, same model, data and hyper-parameters.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \\
        python bench/bench_mlx.py [--rows 128] [--epochs 2] [--out bench/results/mlx.json]

Builds a small random Llama (hidden 384, 6 layers, GQA; ~14M params) and mixed-length prompt/
completion data (rows of ~20 to ~450 tokens), then trains LoRA r=8 alpha=16 (mlx-lm scale 2.0)
on every linear layer with Adam lr 1e-4, batch 8, max_seq_length 512, for the same number of
epochs, each run in its own process:
  - mlx_lm     : mlx_lm.tuner.trainer.train (its compiled step, length-sorted batches padded to 32)
  - ours       : tunerd.training.loop.train + MLXBackend (length-grouped batches, no pad-to-32)
  - ours_packed: the same with packing (batch size chosen for about the same tokens per step)
tokens/s counts REAL input tokens (no padding) over the training loop's wall time (model loading
and data preparation excluded for both); peak memory is mx.get_peak_memory() during training.
Results: JSON (stdout last line, and --out) plus a table.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "ren", "su", "tav", "ul", "vex", "zor", "qui")
         for b in ("da", "ne", "ri", "mo", "lu", "tes", "pra", "go")]
LR, RANK, ALPHA, BATCH, MAX_LEN = 1e-4, 8, 16.0, 8, 512


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        p = rng.choice([4, 8, 16, 32, 64, 96, 128, 160])        # skewed mix of short and long rows
        c = rng.choice([4, 8, 16, 32, 48])
        rows.append({"prompt": " ".join(rng.choice(WORDS) for _ in range(p)),
                     "completion": " ".join(rng.choice(WORDS) for _ in range(c))})
    return rows


def build(workdir: Path, n_rows: int) -> dict:
    from tunerd.demo.tiny import TinyModelSpec, build_tiny_model, write_jsonl

    rows = make_rows(n_rows)
    model = workdir / "model"
    if not (model / "config.json").exists():
        corpus = [r["prompt"] + " " + r["completion"] for r in rows]
        build_tiny_model(model, corpus, TinyModelSpec(hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                                                      num_key_value_heads=2, intermediate_size=1024,
                                                      vocab_size=1024, max_position_embeddings=1024))
    train = write_jsonl(workdir / "data" / "train.jsonl", rows)
    return {"model": str(model), "train": str(train)}


# ---- workers (each in its own process) ---------------------------------------------------------

def run_mlx_lm(model_dir: str, train_file: str, epochs: int) -> dict:
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx_lm.tuner.datasets import CacheDataset, CompletionsDataset
    from mlx_lm.tuner.trainer import TrainingArgs, iterate_batches, train
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load

    model, tok = load(model_dir)
    model.freeze()
    mx.random.seed(0)
    linear_to_lora_layers(model, len(model.layers), {"rank": RANK, "scale": ALPHA / RANK, "dropout": 0.0})
    rows = [json.loads(x) for x in Path(train_file).read_text().splitlines()]
    ds = CacheDataset(CompletionsDataset(rows, tok, "prompt", "completion", mask_prompt=True))
    real = sum(len(ds[i][0]) - 1 for i in range(len(ds)))       # input tokens of one pass, no padding
    n_batches = len(ds) // BATCH
    iters = n_batches * epochs
    real_tokens = real * epochs * (n_batches * BATCH) / len(ds)
    opt = optim.Adam(learning_rate=LR)
    args = TrainingArgs(batch_size=BATCH, iters=iters, steps_per_report=10 ** 9, steps_per_save=10 ** 9,
                        max_seq_length=MAX_LEN, adapter_file=str(Path(tempfile.mkdtemp()) / "a.safetensors"))
    mx.reset_peak_memory()
    t = time.perf_counter()
    devnull = open(os.devnull, "w")
    stdout, sys.stdout = sys.stdout, devnull
    try:
        train(model, opt, ds, None, args=args, iterate_batches=iterate_batches)
    finally:
        sys.stdout = stdout
    secs = time.perf_counter() - t
    return {"steps": iters, "seconds": secs, "real_tokens": int(real_tokens),
            "tokens_per_second": real_tokens / secs, "peak_memory_bytes": int(mx.get_peak_memory())}


def run_ours(model_dir: str, train_file: str, epochs: int, packing: bool) -> dict:
    import mlx.core as mx

    from tunerd.backends.mlx_backend import MLXBackend
    from tunerd.config.schema import DataConfig, TrainConfig
    from tunerd.training import events as ev
    from tunerd.training.loop import train

    batch = BATCH
    if packing:  # about the same real tokens per optimizer step as the unpacked runs
        rows = [json.loads(x) for x in Path(train_file).read_text().splitlines()]
        avg_tokens = sum(len((r["prompt"] + r["completion"]).split()) for r in rows) / len(rows) * 2.2
        batch = max(1, round(BATCH * avg_tokens / MAX_LEN))
    cfg = TrainConfig(model=model_dir, output_dir=tempfile.mkdtemp(), peft_adapter="lora", lora_r=RANK,
                      lora_alpha=ALPHA, lora_target_modules="all-linear", optimizer="adam", learning_rate=LR,
                      lr_scheduler_type="constant", max_grad_norm=0.0, per_device_train_batch_size=batch,
                      num_epochs=epochs, max_seq_length=MAX_LEN, packing=packing, logging_steps=10 ** 9,
                      eval_strategy="no", save_strategy="no",
                      data=DataConfig(train=train_file, validation=train_file))
    steps = []
    backend = MLXBackend()
    orig_add = backend.add_adapter

    def add_adapter(c):  # reset the peak after loading, like the mlx_lm run
        out = orig_add(c)
        mx.reset_peak_memory()
        return out
    backend.add_adapter = add_adapter
    train(cfg, backend, lambda e: steps.append(e) if isinstance(e, ev.Step) else None)
    last = steps[-1]
    return {"steps": last.step, "seconds": last.elapsed_seconds, "real_tokens": last.trained_tokens,
            "tokens_per_second": last.trained_tokens / last.elapsed_seconds,
            "peak_memory_bytes": int(mx.get_peak_memory()), "batch_size": batch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", choices=["mlx_lm", "ours", "ours_packed"])
    ap.add_argument("--model")
    ap.add_argument("--train")
    a = ap.parse_args()
    if a.worker:
        if a.worker == "mlx_lm":
            res = run_mlx_lm(a.model, a.train, a.epochs)
        else:
            res = run_ours(a.model, a.train, a.epochs, packing=a.worker == "ours_packed")
        print("RESULT " + json.dumps(res))
        return

    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench_mlx_"))
    paths = build(work, a.rows)
    from tunerd.backends.mlx_backend import blas_warning
    results = {"config": {"rows": a.rows, "epochs": a.epochs, "batch_size": BATCH, "max_seq_length": MAX_LEN,
                          "lora_r": RANK, "lora_alpha": ALPHA, "learning_rate": LR, "model": "llama h384 L6",
                          "blas_warning": blas_warning()}, "runs": {}}
    for name in ("mlx_lm", "ours", "ours_packed"):
        cmd = [sys.executable, __file__, "--worker", name, "--model", paths["model"], "--train", paths["train"],
               "--epochs", str(a.epochs)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            results["runs"][name] = {"error": proc.stderr[-2000:]}
            continue
        results["runs"][name] = json.loads(line[-1][len("RESULT "):])
    base = results["runs"].get("mlx_lm", {}).get("tokens_per_second")
    print(f"{'run':<12} {'steps':>6} {'real tok':>9} {'seconds':>8} {'tok/s':>8} {'vs mlx_lm':>9} {'peak MiB':>9}")
    for name, r in results["runs"].items():
        if "error" in r:
            print(f"{name:<12} ERROR {r['error'][-300:]}")
            continue
        speed = f"{r['tokens_per_second'] / base:.2f}x" if base else "-"
        print(f"{name:<12} {r['steps']:>6} {r['real_tokens']:>9} {r['seconds']:>8.1f} "
              f"{r['tokens_per_second']:>8.0f} {speed:>9} {r['peak_memory_bytes'] / 2 ** 20:>9.1f}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
