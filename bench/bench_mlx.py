"""Benchmark: MacTuner's MLX training vs mlx-lm's LoRA trainer, same model, data and hyper-parameters.

    python bench/bench_mlx.py [--rows 128] [--epochs 2] [--out bench/results/mlx.json]

(each run is a child process with OpenBLAS preloaded on Linux, DESIGN.md §2; bench/common.py).

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
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

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
    n_rows = sum(1 for x in Path(train_file).read_text().splitlines() if x.strip())
    iters = n_rows // BATCH * epochs  # mlx-lm drops the last partial batch
    return common.run_mlx_lm(model_dir, train_file, iters=iters, batch=BATCH, lr=LR, max_len=MAX_LEN, lora_r=RANK,
                             lora_alpha=ALPHA, optimizer="adam", schedule="constant", bias_correction=False)


def run_ours(model_dir: str, train_file: str, epochs: int, packing: bool) -> dict:
    from tunerd.backends.mlx import MLXBackend
    from tunerd.config.schema import DataConfig, TrainConfig

    batch = BATCH
    if packing:  # about the same real tokens per optimizer step as the unpacked runs
        rows = [json.loads(x) for x in Path(train_file).read_text().splitlines()]
        avg_tokens = sum(len((r["prompt"] + r["completion"]).split()) for r in rows) / len(rows) * 2.2
        batch = max(1, round(BATCH * avg_tokens / MAX_LEN))
    cfg = TrainConfig(model=model_dir, output_dir=tempfile.mkdtemp(), peft_adapter="lora", lora_r=RANK,
                      lora_alpha=ALPHA, lora_target_modules="all-linear", optimizer="adam", learning_rate=LR,
                      lr_scheduler_type="constant", max_grad_norm=0.0, per_device_train_batch_size=batch,
                      num_epochs=epochs, max_seq_length=MAX_LEN, packing=packing, logging_steps=1,
                      eval_strategy="no", save_strategy="no", dtype="float32",
                      data=DataConfig(train=train_file, validation=train_file))
    return {**common.run_ours(cfg, MLXBackend(), "mlx"), "batch_size": batch}


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
        common.report(res)
        return

    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench_mlx_"))
    paths = build(work, a.rows)
    results = {"config": {"rows": a.rows, "epochs": a.epochs, "batch_size": BATCH, "max_seq_length": MAX_LEN,
                          "lora_r": RANK, "lora_alpha": ALPHA, "learning_rate": LR, "model": "llama h384 L6",
                          "openblas_preloaded": common.openblas_path() or None}, "runs": {}}
    for name in ("mlx_lm", "ours", "ours_packed"):
        try:
            results["runs"][name] = common.run_child(__file__, ["--worker", name, "--model", paths["model"],
                                                                "--train", paths["train"], "--epochs", str(a.epochs)],
                                                     blas=True)
        except RuntimeError as e:
            results["runs"][name] = {"error": str(e)[-2000:]}
    base = results["runs"].get("mlx_lm", {}).get("tokens_per_s")
    print(f"{'run':<12} {'steps':>6} {'real tok':>9} {'seconds':>8} {'tok/s':>8} {'vs mlx_lm':>9} {'peak MiB':>9}")
    for name, r in results["runs"].items():
        if "error" in r:
            print(f"{name:<12} ERROR {r['error'][-300:]}")
            continue
        speed = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
        print(f"{name:<12} {r['steps']:>6} {r['tokens']:>9} {r['seconds']:>8.1f} "
              f"{r['tokens_per_s']:>8.0f} {speed:>9} {r['peak_bytes'] / 2 ** 20:>9.1f}")
    if a.out:
        common.write_results(a.out, results)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
