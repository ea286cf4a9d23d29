"""Scale benchmark: MacTuner against its peers on a model of a real architecture and size.

Builds offline a random-weight Llama of a real shape, saved in bf16 like a real checkpoint, plus a
BPE tokenizer trained on the fly (its vocabulary is smaller than the model's; the LM head still
computes every row) and chat rows of varied length (prompt + answer, log-uniform lengths):

    --shape llama-1b  the Llama-3.2-1B shape: hidden 2048, 16 layers, 32 heads / 8 KV heads,
                      intermediate 8192, vocab 128,256, tied embeddings, rope_theta 500000 (llama3
                      rope scaling); rows of 30-1,000 tokens, max_seq_length 1024. 1.24B params.
    --shape mid       hidden 512, 8 layers, 8 heads / 4 KV heads, intermediate 1536, vocab 32,000,
                      tied; rows of 30-512 tokens, max_seq_length 512. A size a 2-core CPU trains
                      in minutes, with a vocabulary large enough that the LM head's memory shows.

and trains the same rows with the same hyper-parameters (LoRA r 16 / alpha 32 on all linear
layers, AdamW lr 2e-4 with linear decay, no warm-up, weight decay 0, batch 8, a fixed number of
steps, loss on the answers only, no gradient checkpointing unless --gradient-checkpointing):

    backend torch: ours (tunerd.training.loop.train + TorchBackend) vs TRL SFTTrainer + PEFT
    backend mlx:   ours (tunerd.training.loop.train + MLXBackend)   vs mlx-lm's trainer (the one
                   `mlx_lm.lora` runs, with mlx-lm's own dataset loader, batching and loss)

in three modes: lora; qlora (ours `quantization: 4bit`; TRL bitsandbytes nf4 + double quant with
compute in the run's dtype; on MLX both sides affine 4-bit, group 64); packed (ours `packing: true`,
TRL `packing=True` with its default strategy, padding-free; mlx-lm cannot pack, so its lora run is
the reference for the MLX packed row). Ours runs with the product's DEFAULT dtype and packing
(`dtype: auto`, `packing: auto`; the lora and qlora rows do not force packing either way); the peer
gets the dtype ours resolved for the same backend and mode (bf16 on CUDA/Metal; float32 on a CPU
unless ours chose 16-bit there, as torch does on a CPU with fast bf16 matmuls); --dtype sets both,
--packing sets ours'. What each side actually ran is in the JSON (`started` is ours' Started event,
with the resolved dtype/packing and why; `peer` says what the peer ran).

Each (runner, mode) is a fresh subprocess, so peak memory is its own: torch.cuda.max_memory_allocated
on CUDA, mx.get_peak_memory for MLX, and on a CPU the peak RSS (ru_maxrss) and the RSS growth during
training (peak RSS from the first step on, minus the RSS after loading), the same measure for both
sides. tokens/s counts real (non-padding) input tokens from the first step's start to the last
step's end; loading and tokenization are excluded for both. MFU = tokens/s x
tunerd.training.flops.flops_per_token(config, token-weighted mean row length, ours' trainable
fraction) / the device's matmul peak in the run's dtype (`peak_flops`, measured once per run and
shared by its children through a $TUNER_HOME cache), the same formula for both sides; ours' own
per-step MFU is in `last_step`. Final loss: the mean of the last quarter of the steps' losses (each
runner sees its own batch order; the JSON has every step's).

    python bench/bench_scale.py --shape mid                        # torch + mlx, all modes, CPU ok
    python bench/bench_scale.py --shape mid --backend torch --modes lora,packed --steps 6
    python bench/bench_scale.py --shape llama-1b --backend torch --json bench/results/scale_h100.json
    python bench/bench_scale.py --shape mid --json bench/results/scale_cpu_mid.json   # -> table + JSON

It uses CUDA (torch) or Metal (MLX) when present and the CPU otherwise (--device to choose). MLX
children on Linux get OpenBLAS preloaded (DESIGN.md §2). Default steps: 40 on a GPU; on a CPU 6 for
mid and 2 for llama-1b (the 1B shape is for GPUs), except MLX qlora on a CPU: 2 (mid) / 1, because
MLX's 4-bit matmul on a CPU is ~7x slower than its float32 one (measured here: ~110 s per mid step).
--steps sets every run's. Results of committed runs: bench/results/scale_*.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LLAMA3_ROPE = {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
               "original_max_position_embeddings": 8192, "rope_type": "llama3"}
SHAPES = {
    "llama-1b": dict(model=dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                                intermediate_size=8192, model_vocab_size=128256, max_position_embeddings=131072,
                                rope_scaling=LLAMA3_ROPE),
                     tokenizer_vocab=16000, max_len=1024, row_tokens=(30, 1000), cpu_steps=2, cpu_steps_mlx_qlora=1),
    "mid": dict(model=dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                           intermediate_size=1536, model_vocab_size=32000, max_position_embeddings=4096),
                tokenizer_vocab=8000, max_len=512, row_tokens=(30, 512), cpu_steps=6, cpu_steps_mlx_qlora=2),
    # the smoke test's size (hidden flag --toy): the mid shape's make-up, tiny
    "toy": dict(model=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=128, model_vocab_size=2048, max_position_embeddings=512),
                tokenizer_vocab=600, max_len=128, row_tokens=(30, 128), cpu_steps=1, cpu_steps_mlx_qlora=1),
}
COMMON_MODEL = dict(tie_word_embeddings=True, rope_theta=500000.0, torch_dtype="bfloat16", initializer_range=0.02)
HP = dict(lora_r=16, lora_alpha=32, lr=2e-4, seed=0, scheduler="linear")
MODES = ("lora", "qlora", "packed")


# ---- model and rows ---------------------------------------------------------------------------------

_SYL = ["ka", "lo", "mi", "ren", "su", "tav", "ul", "vex", "zor", "qui", "bra", "den", "fi", "gor", "hal", "jin",
        "ko", "lim", "nar", "op", "pe", "ris", "sel", "tum", "ur", "vy", "wen", "xa", "yol", "ze"]


def _words(rng: random.Random, n: int = 4000) -> list[str]:
    words = set()
    while len(words) < n:
        words.add("".join(rng.choice(_SYL) for _ in range(rng.choice((1, 2, 2, 3, 3, 4)))))
    return sorted(words)


class Text:
    """Zipf-distributed pseudo-words with punctuation: text a BPE splits into a realistic mix."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        self.words = _words(self.rng)
        self.weights = [1.0 / (i + 1) for i in range(len(self.words))]

    def __call__(self, n: int) -> str:
        ws = self.rng.choices(self.words, self.weights, k=max(1, n))
        out = []
        for i, w in enumerate(ws):
            out.append(w.capitalize() if i == 0 or out[-1].endswith(".") else w)
            if self.rng.random() < 0.08:
                out[-1] += self.rng.choice((".", ",", "?", "."))
        return " ".join(out)


def build_model(work: Path, shape: str) -> Path:
    """The shape's model dir under `work` (built once; rebuilt when the spec changes)."""
    from tunerd.demo.tiny import TinyModelSpec, build_tiny_model

    sh = SHAPES[shape]
    spec = TinyModelSpec(**{**COMMON_MODEL, **sh["model"]}, vocab_size=sh["tokenizer_vocab"])
    out = work / "model"
    key = json.dumps(dataclasses.asdict(spec), sort_keys=True)
    if (out / "config.json").exists() and (out / "spec.json").exists() and (out / "spec.json").read_text() == key:
        return out
    text = Text(seed=1)
    corpus = [text(200) for _ in range(200 if shape == "toy" else 2000)]
    build_tiny_model(out, corpus, spec)
    (out / "spec.json").write_text(key)
    return out


def build_rows(model_dir: Path, shape: str, n: int, seed: int = 0) -> tuple[list[dict], list[int]]:
    """`n` chat rows (prompt/completion) whose chat-templated length is log-uniform in the shape's
    range; returns the rows and their token counts."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    lo, hi = SHAPES[shape]["row_tokens"]
    text, rng = Text(seed=seed + 100), random.Random(seed)

    def n_tokens(r):
        msgs = [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]
        ids = tok.apply_chat_template(msgs, tokenize=True)
        return len(ids["input_ids"] if hasattr(ids, "keys") else ids)
    probe = text(400)
    per_word = len(tok(probe)["input_ids"]) / 400
    rows, lengths = [], []
    while len(rows) < n:
        target = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        words = max(2, round((target - 10) / per_word))
        k = max(1, round(words * rng.uniform(0.2, 0.7)))  # the answer's share
        r = {"prompt": text(words - k), "completion": text(k)}
        m = n_tokens(r)
        if lo <= m <= hi:
            rows.append(r)
            lengths.append(m)
    return rows, lengths


def build(work: Path, shape: str, steps: int, batch: int) -> dict:
    from tunerd.demo.tiny import write_jsonl

    model = build_model(work, shape)
    lo, hi = SHAPES[shape]["row_tokens"]
    mean_len = (hi - lo) / math.log(hi / lo)
    # enough rows for `steps` packed batches (8 sequences of max_len each), with margin
    n = max(64, math.ceil(steps * batch * SHAPES[shape]["max_len"] / mean_len * 1.3))
    data, lengths_file = work / f"train-{n}.jsonl", work / f"train-{n}.lengths.json"
    if not (data.exists() and lengths_file.exists()):
        rows, lengths = build_rows(model, shape, n)
        write_jsonl(work / "valid.jsonl", rows[:8])
        write_jsonl(data, rows)
        lengths_file.write_text(json.dumps(lengths))
    lengths = json.loads(lengths_file.read_text())
    return {"model": str(model), "data": str(data), "valid": str(work / "valid.jsonl"), "rows": n,
            "row_tokens": {"min": min(lengths), "mean": sum(lengths) / len(lengths), "max": max(lengths),
                           "token_weighted_mean": sum(x * x for x in lengths) / sum(lengths)}}


# ---- one measured run (child process) ------------------------------------------------------------------

def torch_device(name: str) -> str:
    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def _bool_or(v: str):
    return {"true": True, "false": False}.get(str(v).lower(), v)


def run_ours(job: dict) -> dict:
    from tunerd.config.schema import DataConfig, TrainConfig

    mode, backend_name = job["mode"], job["backend"]
    kw = dict(model=job["model"], backend=backend_name, lora_r=HP["lora_r"], lora_alpha=HP["lora_alpha"],
              lora_target_modules="all-linear", optimizer="adamw", learning_rate=HP["lr"],
              lr_scheduler_type=HP["scheduler"], warmup_steps=0, weight_decay=0.0,
              per_device_train_batch_size=job["batch"], max_steps=job["steps"], max_seq_length=job["max_len"],
              gradient_checkpointing=job["gradient_checkpointing"], seed=HP["seed"], eval_strategy="no",
              save_strategy="no", logging_steps=1, output_dir=tempfile.mkdtemp(prefix="bench-scale-ours-"),
              data=DataConfig(train=job["data"], validation=job["valid"]))
    if mode == "qlora":
        kw["quantization"] = "4bit"
        if backend_name == "torch" and (why := _no_bitsandbytes()):
            return {"runner": "ours", "skipped": why}
    if mode == "packed":
        kw["packing"] = True
    elif job.get("packing") is not None:
        kw["packing"] = _bool_or(job["packing"])
    if job.get("dtype"):
        kw["dtype"] = job["dtype"]
    if backend_name == "torch":
        from tunerd.backends.torch import TorchBackend

        kw["device"] = torch_device(job["device"])
        backend, kind = TorchBackend(), kw["device"]
    else:
        from tunerd.backends.mlx import MLXBackend

        backend, kind = MLXBackend(), "mlx"
    cfg = TrainConfig(**kw)
    res = common.run_ours(cfg, backend, kind)
    st = res["started"]
    # what ours actually used: the Started event's own fields where it has them, else the config's
    res["dtype"] = st.get("dtype") or cfg.dtype
    res["packing"] = st.get("packing", cfg.packing)
    res["dtype_source"] = "Started" if st.get("dtype") else "TrainConfig"
    res["packing_source"] = "Started" if "packing" in st else "TrainConfig"
    res["config"] = {"dtype": cfg.dtype, "packing": cfg.packing}  # what the config asked for (the defaults)
    res["device"] = st.get("device")
    res["quantization"] = cfg.quantization
    res["total_params"], res["trainable_params"] = st["total_params"], st["trainable_params"]
    if st.get("peak_tflops"):
        res["peak_tflops"] = st["peak_tflops"]
    return res


def _no_bitsandbytes() -> str:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        return f"4-bit on torch needs bitsandbytes, which is not installed here ({e})"
    return ""


def peer_dtype(job: dict, gpu: bool) -> tuple[str, str]:
    """The peer's dtype and why: --dtype, else the dtype ours resolved in the same (backend, mode),
    else bf16 on a GPU / float32 on a CPU."""
    if job.get("dtype"):
        return job["dtype"], "--dtype"
    if job.get("match_dtype"):
        return job["match_dtype"], "the dtype ours resolved for this backend and mode"
    return ("bfloat16", "GPU default") if gpu else ("float32", "CPU default")


def _share_peaks(home: str | None) -> None:
    """The run's children share one measured peak per device: its home's device_peak.json."""
    try:
        from tunerd.backends.peak import keep_peaks_in
    except ImportError:
        return
    if home:
        keep_peaks_in(Path(home) / "device_peak.json")


def device_peak(device: str, dtype: str) -> dict:
    """The device's measured matmul peak (tunerd.backends.peak, cached across the run's children
    through $TUNER_HOME/device_peak.json, so ours and the peer divide by the same number)."""
    try:
        from tunerd.backends.registry import peak_flops
    except ImportError:
        return {}
    try:
        return {"peak_tflops": peak_flops(device, dtype) / 1e12}
    except Exception as e:  # a device/dtype it cannot measure
        return {"peak_error": f"{type(e).__name__}: {e}"}


def run_peer(job: dict) -> dict:
    mode = job["mode"]
    if job["backend"] == "torch":
        device = torch_device(job["device"])
        dtype, why = peer_dtype(job, device != "cpu")
        if mode == "qlora" and (missing := _no_bitsandbytes()):
            return {"runner": "trl", "skipped": missing}
        res = common.run_trl(job["model"], job["data"], device=device, dtype=dtype,
                             quant="4bit" if mode == "qlora" else "none", packing=mode == "packed",
                             batch=job["batch"], lr=HP["lr"], max_len=job["max_len"], lora_r=HP["lora_r"],
                             lora_alpha=HP["lora_alpha"], max_steps=job["steps"], seed=HP["seed"],
                             gradient_checkpointing=job["gradient_checkpointing"], lr_scheduler=HP["scheduler"])
        res.update(dtype=dtype, dtype_source=why, packing=mode == "packed", device=device, **device_peak(device, dtype))
        return res
    import mlx.core as mx

    dtype, why = peer_dtype(job, mx.default_device().type != mx.cpu)
    res = common.run_mlx_lm(job["model"], job["data"], iters=job["steps"], batch=job["batch"], lr=HP["lr"],
                            max_len=job["max_len"], lora_r=HP["lora_r"], lora_alpha=HP["lora_alpha"],
                            optimizer="adamw", schedule=HP["scheduler"], bias_correction=True, dtype=dtype,
                            quant_bits=4 if mode == "qlora" else 0, group_size=64, seed=HP["seed"])
    res.update(dtype=dtype, dtype_source=why, packing=False, device=str(mx.default_device()),
               **device_peak(str(mx.default_device()), dtype))
    return res


# ---- MFU (tunerd.training.flops, when it exists) -------------------------------------------------------

def add_mfu(results: list[dict], model_config: dict, seq_len: float) -> str:
    """Adds `mfu` and `achieved_tflops` to each result (None where there is no flops module or no
    measured peak); returns a note on how."""
    try:
        from tunerd.training.flops import flops_per_token
    except ImportError:
        for r in results:
            r["mfu"] = None
        return "tunerd.training.flops is not there: MFU null"
    for r in results:
        r["mfu"] = None
        if r.get("skipped") or r.get("error") or not r.get("tokens_per_s") or not r.get("peak_tflops"):
            continue
        ref = next((x for x in results if x["backend"] == r["backend"] and x["runner"] == "ours"
                    and x["mode"] == "lora" and x.get("total_params")), r)
        frac = ref["trainable_params"] / ref["total_params"]
        achieved = r["tokens_per_s"] * flops_per_token(model_config, seq_len, frac)
        r["achieved_tflops"] = achieved / 1e12
        r["mfu"] = achieved / (r["peak_tflops"] * 1e12)
    return (f"tokens/s x tunerd.training.flops.flops_per_token(config.json, seq_len={seq_len:.0f} (token-weighted "
            f"mean row length), trainable fraction of ours' lora run) / the device's measured matmul peak in the "
            f"run's dtype (peak_tflops, one cached measurement per device and dtype for the whole run)")


def _device_kind(device) -> str:
    """cuda | mps | gpu (MLX on Metal or CUDA) | cpu, from a torch device or an MLX `Device(gpu, 0)`."""
    d = str(device or "cpu").lower()
    return next((k for k in ("cuda", "mps", "gpu") if k in d), "cpu")


# ---- table -----------------------------------------------------------------------------------------------

def _tail_loss(r: dict):
    ls = r.get("losses") or []
    if not ls:
        return None
    k = max(1, len(ls) // 4)
    return sum(ls[-k:]) / k


def table(results: list[dict], cpu: bool) -> str:
    head = ("| backend | mode | runner | dtype | packing | real tokens/s | peak memory (MiB) |"
            + (" RSS growth in training (MiB) |" if cpu else "") + " MFU | final loss | ours / peer |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        if r.get("skipped") or r.get("error"):
            why = r.get("skipped") or r.get("error", "").strip().splitlines()[-1][:120]
            lines.append(f"| {r['backend']} | {r['mode']} | {r['runner']} | | | skipped: {why} | |"
                         + (" |" if cpu else "") + " | | |")
            continue
        ratio = ""
        if r["runner"] == "ours":
            peer = next((p for p in results if p["backend"] == r["backend"] and p["mode"] == r["mode"]
                         and p["runner"] != "ours" and p.get("tokens_per_s")), None)
            if peer:
                ratio = f"{r['tokens_per_s'] / peer['tokens_per_s']:.2f}x tok/s, " \
                        f"{r['peak_bytes'] / peer['peak_bytes']:.2f}x peak"
                if cpu and r.get("rss_growth_bytes") and peer.get("rss_growth_bytes"):
                    ratio += f", {r['rss_growth_bytes'] / peer['rss_growth_bytes']:.2f}x RSS growth"
        mfu = "-" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
        loss = _tail_loss(r)
        packing = r.get("packing")
        lines.append(f"| {r['backend']} | {r['mode']} | {r['runner']}{' (its lora run)' if r.get('reused') else ''} | "
                     f"{r.get('dtype')} | {packing} | {r['tokens_per_s']:,.0f} | {common.mib(r['peak_bytes'])} |"
                     + (f" {common.mib(r.get('rss_growth_bytes'))} |" if cpu else "")
                     + f" {mfu} | {'-' if loss is None else f'{loss:.3f}'} | {ratio} |")
    return "\n".join(lines)


# ---- orchestration ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["llama-1b", "mid"], default="mid")
    ap.add_argument("--backend", choices=["torch", "mlx", "both"], default="both")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated: lora,qlora,packed")
    ap.add_argument("--runners", default="ours,peer", help="ours,peer (or one of them)")
    ap.add_argument("--steps", type=int, default=0, help="optimizer steps per run (default: 40 on a GPU, "
                                                         "fewer on a CPU, see above)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", default="", help="override ours' default dtype and the peer's (float32 | bfloat16 | ...)")
    ap.add_argument("--packing", default=None, help="override ours' default packing in the lora/qlora rows "
                                                   "(true | false | auto)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--device", default="auto", help="torch device: auto | cuda | mps | cpu")
    ap.add_argument("--work", default="", help="where the model and rows are built (kept between runs)")
    ap.add_argument("--json", default="", help="write the results here")
    ap.add_argument("--timeout", type=float, default=0, help="seconds per child run (0: none)")
    ap.add_argument("--from-json", default="", help="recompute MFU and the table of a saved run (e.g. once "
                                                    "tunerd.training.flops exists); writes --json (default: same file)")
    ap.add_argument("--toy", action="store_true", help=argparse.SUPPRESS)  # the smoke test's tiny shape
    ap.add_argument("--_child", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._child:
        job = json.loads(a._child)
        _share_peaks(os.environ.get("TUNER_HOME"))
        res = run_ours(job) if job["runner"] == "ours" else run_peer(job)
        res.update(backend=job["backend"], mode=job["mode"])
        common.report(res)
        return None

    if a.from_json:
        saved = json.loads(Path(a.from_json).read_text())
        meta, results = saved["meta"], saved["results"]
        meta["mfu"] = add_mfu(results, meta["model_config"],
                              min(meta["data"]["row_tokens"]["token_weighted_mean"], meta["max_seq_length"]))
        saved["table"] = table(results, cpu=not meta["gpu"])
        print(saved["table"])
        Path(a.json or a.from_json).write_text(json.dumps(saved, indent=2, default=float))
        return saved

    shape = "toy" if a.toy else a.shape
    backends = ["torch", "mlx"] if a.backend == "both" else [a.backend]
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    runners = [r.strip() for r in a.runners.split(",") if r.strip()]
    if bad := [m for m in modes if m not in MODES]:
        ap.error(f"--modes: unknown {bad}; choose from {', '.join(MODES)}")
    gpu = _gpu_present(backends, a.device)
    steps = a.steps or (40 if gpu else SHAPES[shape]["cpu_steps"])
    work = Path(a.work or Path(tempfile.gettempdir()) / "mactuner-bench-scale" / shape)
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    setup = build(work, shape, steps, a.batch)
    print(f"model {setup['model']} ({shape}), {setup['rows']} rows of {setup['row_tokens']['min']}-"
          f"{setup['row_tokens']['max']} tokens (mean {setup['row_tokens']['mean']:.0f}); set-up "
          f"{time.perf_counter() - t:.0f} s; {steps} steps per run", flush=True)
    from tunerd.config.schema import TrainConfig

    defaults = TrainConfig()
    meta = {"shape": shape, "model_config": json.loads((Path(setup["model"]) / "config.json").read_text()),
            "data": setup, "steps": steps, "batch": a.batch, "max_seq_length": SHAPES[shape]["max_len"], "hp": HP,
            "ours_defaults": {"dtype": defaults.dtype, "packing": defaults.packing},
            "overrides": {"dtype": a.dtype or None, "packing": a.packing}, "host": platform.platform(),
            "cpus": os.cpu_count(), "gpu": gpu, "gradient_checkpointing": a.gradient_checkpointing,
            "versions": _versions(), "command": "python bench/bench_scale.py " + " ".join(argv or sys.argv[1:])}
    home = work / f"tuner-home-{os.getpid()}"  # this run's device-peak cache (backends/peak.py)
    home.mkdir(exist_ok=True)
    results = []
    for backend in backends:
        for mode in modes:
            for runner in runners:
                if backend == "mlx" and mode == "packed" and runner == "peer":
                    ref = next((r for r in results if r["backend"] == "mlx" and r["mode"] == "lora"
                                and r["runner"] == "mlx_lm"), None)
                    if ref is not None:  # mlx-lm has no packing: its lora run is the reference
                        results.append({**ref, "mode": "packed", "reused": True})
                        continue
                ours = next((r for r in results if r["backend"] == backend and r["mode"] == mode
                             and r["runner"] == "ours" and r.get("dtype")), None)
                job = {"runner": runner, "backend": backend, "mode": mode, "model": setup["model"],
                       "match_dtype": ours["dtype"] if ours else None,
                       "data": setup["data"], "valid": setup["valid"], "batch": a.batch,
                       "steps": steps if a.steps or gpu or (backend, mode) != ("mlx", "qlora")
                       else SHAPES[shape]["cpu_steps_mlx_qlora"],
                       "max_len": SHAPES[shape]["max_len"], "dtype": a.dtype or None, "packing": a.packing,
                       "device": a.device, "gradient_checkpointing": a.gradient_checkpointing}
                t = time.perf_counter()
                try:
                    r = common.run_child(__file__, ["--_child", json.dumps(job)], blas=backend == "mlx",
                                         env={"TUNER_HOME": str(home)}, timeout=a.timeout or None)
                except Exception as e:  # keep going: one failed run should not lose the others
                    r = {"runner": runner, "backend": backend, "mode": mode, "error": str(e)[-3000:]}
                r["wall_seconds"] = time.perf_counter() - t
                results.append(r)
                _print_run(r)
    seq = setup["row_tokens"]["token_weighted_mean"]
    meta["mfu"] = add_mfu(results, meta["model_config"], min(seq, SHAPES[shape]["max_len"]))
    tab = table(results, cpu=not gpu)
    print("\n" + tab)
    out = {"meta": meta, "results": results, "table": tab}
    if a.json:
        common.write_results(a.json, out)
    return out


def _gpu_present(backends: list[str], device: str) -> bool:
    """Whether the runs use a GPU (CUDA/MPS for torch, Metal/CUDA for MLX): decides default steps,
    the peer's dtype and the memory measure shown."""
    if "torch" in backends:
        if device == "cpu" and backends == ["torch"]:
            return False
        return device in ("cuda", "mps") or (device == "auto" and _probe("import torch,sys; sys.exit(0 if "
                                                                           "torch.cuda.is_available() or "
                                                                           "torch.backends.mps.is_available() else 1)"))
    return _probe("import mlx.core as mx,sys; sys.exit(0 if mx.default_device().type != mx.cpu else 1)")


def _probe(code: str) -> bool:
    import subprocess

    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("torch", "transformers", "peft", "trl", "bitsandbytes", "mlx", "mlx-lm"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def _print_run(r: dict) -> None:
    if r.get("error") or r.get("skipped"):
        print(f"{r['backend']:5s} {r['mode']:6s} {r['runner']:6s} {'SKIPPED' if r.get('skipped') else 'FAILED'}: "
              f"{(r.get('skipped') or r['error'])[-600:]}", flush=True)
        return
    print(f"{r['backend']:5s} {r['mode']:6s} {r['runner']:6s} {r['tokens_per_s']:9,.0f} tok/s  peak "
          f"{common.mib(r['peak_bytes'])} MiB  RSS growth {common.mib(r.get('rss_growth_bytes'))} MiB  "
          f"({r['steps']} steps, {r['tokens']} tokens, {r['seconds']:.1f} s; loss {r['final_loss']:.3f}; "
          f"dtype {r.get('dtype')}, packing {r.get('packing')}; wall {r['wall_seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
