"""What the benchmarks share: one child process per measured run, memory probes, and the three
runners (ours through the real training loop, TRL `SFTTrainer` + PEFT, mlx-lm's trainer).

Every runner returns the same record, so the benchmarks compare like with like:
  steps, tokens (real, non-padding INPUT tokens: each row counts its length - 1, the positions it
  is trained on, for all three runners), seconds (first step's start to the last step's end; model
  loading, tokenization and set-up excluded), tokens_per_s, losses (one per step), final_loss,
  and the memory of `MemoryProbe.stop()`.

The benchmarks import this file as `common` (bench/ is on sys.path when a script in it runs).
"""
from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULT = "RESULT "


# ---- child processes -----------------------------------------------------------------------------

def openblas_path() -> str:
    """The OpenBLAS that MLX on Linux wants preloaded (DESIGN.md §2), or ''."""
    try:
        from tunerd.host import optimized_blas_path
        return optimized_blas_path()
    except ImportError:  # pragma: no cover
        p = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"
        return p if os.path.exists(p) else ""


def run_child(script: str, args: list[str], *, blas: bool = False, env: dict | None = None,
              timeout: float | None = None) -> dict:
    """Run `python script *args` in a fresh process and return the dict it printed as its last
    `RESULT {json}` line. `blas=True` preloads OpenBLAS (MLX runs); otherwise LD_PRELOAD is dropped.
    Raises RuntimeError with the tail of stderr when the child fails."""
    e = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    e.update({"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
              "PYTHONUNBUFFERED": "1"})
    if blas and (lib := openblas_path()):
        e["LD_PRELOAD"] = lib
    e.update(env or {})
    res = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=e, timeout=timeout)
    lines = [x for x in res.stdout.splitlines() if x.startswith(RESULT)]
    if res.returncode or not lines:
        raise RuntimeError(f"{Path(script).name} {' '.join(args)}: exit {res.returncode}\n{res.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT):])


def report(result: dict) -> None:
    """The child's side of `run_child`."""
    print(RESULT + json.dumps(result, default=float), flush=True)


# ---- memory ----------------------------------------------------------------------------------------

def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # macOS
        return 0


def peak_rss_bytes() -> int:
    """ru_maxrss: the peak resident set since start (or since `reset_peak_rss`)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def reset_peak_rss() -> bool:
    """Linux: reset the peak RSS (VmHWM, which ru_maxrss reads) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _vm_hwm() -> int:
    try:
        m = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
        return int(m.group(1)) * 1024 if m else 0
    except OSError:
        return 0


class MemoryProbe:
    """Peak memory of the training part of a run, the same measure for every runner.

    `start()` right before the first step (model loaded, data tokenized), `stop()` after the last:
      peak_bytes           the device's peak: torch.cuda.max_memory_allocated (cuda),
                           mx.get_peak_memory (mlx), else the process's peak RSS
      peak_rss_bytes       peak RSS of the whole process life (ru_maxrss), loading included
      rss_after_load_bytes RSS at start()
      peak_rss_train_bytes peak RSS between start() and stop() (Linux: VmHWM reset at start())
      rss_growth_bytes     peak_rss_train - rss_after_load: what training itself added
    """

    def __init__(self, kind: str):
        self.kind = kind  # cuda | mps | mlx | cpu

    def start(self) -> None:
        self.load_peak = peak_rss_bytes()
        self.rss0 = rss_bytes()
        self.hwm_reset = reset_peak_rss()
        if self.kind == "cuda":
            import torch
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif self.kind == "mlx":
            import mlx.core as mx
            mx.reset_peak_memory()

    def stop(self) -> dict:
        train_peak = (_vm_hwm() or peak_rss_bytes()) if self.hwm_reset else peak_rss_bytes()
        out = {"peak_rss_bytes": max(self.load_peak, peak_rss_bytes()), "rss_after_load_bytes": self.rss0,
               "peak_rss_train_bytes": train_peak if self.hwm_reset else None,
               "rss_growth_bytes": train_peak - self.rss0 if self.hwm_reset else None}
        if self.kind == "cuda":
            import torch
            out.update(peak_bytes=int(torch.cuda.max_memory_allocated()), memory_measure="torch.cuda.max_memory_allocated")
        elif self.kind == "mps":
            import torch
            out.update(peak_bytes=int(torch.mps.driver_allocated_memory()), memory_measure="torch.mps.driver_allocated_memory")
        elif self.kind == "mlx":
            import mlx.core as mx
            out.update(peak_bytes=int(mx.get_peak_memory()), memory_measure="mx.get_peak_memory")
        else:
            out.update(peak_bytes=out["peak_rss_bytes"], memory_measure="peak RSS (ru_maxrss)")
        return out


def _finish(runner: str, times: list[float], tokens: list[int], losses: list[float], t0: float, mem: dict,
            **extra) -> dict:
    """The common record from per-step end times, per-step real tokens and per-step losses."""
    secs = times[-1] - t0 if times else 0.0
    tok = sum(tokens)
    rec = {"runner": runner, "steps": len(times), "tokens": tok, "seconds": secs,
           "tokens_per_s": tok / secs if secs else 0.0, "losses": losses,
           "final_loss": losses[-1] if losses else None, **mem, **extra}
    if len(times) > 1:  # without the first step (compilation, allocator warm-up)
        rec["tokens_per_s_after_first_step"] = sum(tokens[1:]) / (times[-1] - times[0])
    return rec


# ---- ours: the real training loop -----------------------------------------------------------------

def run_ours(cfg, backend, memory_kind: str, warm_seconds: float = 0.0) -> dict:
    """Train `cfg` (a TrainConfig; eval/saving off, logging_steps 1) with `backend` through
    `tunerd.training.loop.train`. The record adds `started` (the Started event as a dict)."""
    import dataclasses

    from tunerd.training import events as ev
    from tunerd.training.loop import train

    probe = MemoryProbe(memory_kind)
    marks: dict = {}
    times, tokens, losses = [], [], []

    def emit(e):
        if isinstance(e, ev.Started):
            marks["started"] = dataclasses.asdict(e)
            probe.start()
            marks["t0"] = time.perf_counter()
        elif isinstance(e, ev.Step):
            marks["last_step"] = dataclasses.asdict(e)
            times.append(time.perf_counter())
            tokens.append(e.trained_tokens - marks.get("seen", 0))
            marks["seen"] = e.trained_tokens
            losses.append(e.loss)
    train(cfg, backend, emit)
    return _finish("ours", times, tokens, losses, marks["t0"], probe.stop(), started=marks["started"],
                   last_step=marks.get("last_step"))


# ---- TRL SFTTrainer + PEFT ----------------------------------------------------------------------------

def run_trl(model: str, data: str, *, device: str, dtype: str = "float32", quant: str = "none", packing: bool = False,
            batch: int = 8, lr: float = 2e-4, max_len: int = 512, lora_r: int = 16, lora_alpha: float = 32,
            max_steps: int = -1, epochs: float = 1.0, seed: int = 0, gradient_checkpointing: bool = False,
            lr_scheduler: str = "linear") -> dict:
    """TRL's SFTTrainer with a PEFT LoRA on all linear layers, on `data` (jsonl of prompt/completion
    rows, fed as conversational prompt/completion so the chat template applies and only the
    completion is supervised). `quant="4bit"`: bitsandbytes nf4 + double quant, compute in `dtype`.
    `packing`: TRL's packing with its default strategy (bfd, padding-free)."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(seed)
    tdtype = getattr(torch, dtype)
    tok = AutoTokenizer.from_pretrained(model)
    ds = load_dataset("json", data_files=data, split="train")
    ds = ds.map(lambda r: {"prompt": [{"role": "user", "content": r["prompt"]}],
                           "completion": [{"role": "assistant", "content": r["completion"]}]})
    kw: dict = {"dtype": tdtype, "attn_implementation": "sdpa"}
    if quant == "4bit":
        from transformers import BitsAndBytesConfig
        kw.update(quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                         bnb_4bit_use_double_quant=True,
                                                         bnb_4bit_compute_dtype=tdtype),
                  device_map={"": device})
    m = AutoModelForCausalLM.from_pretrained(model, **kw)
    if quant != "4bit":
        m.to(device)
    args = SFTConfig(output_dir=tempfile.mkdtemp(prefix="bench-trl-"), per_device_train_batch_size=batch,
                     learning_rate=lr, lr_scheduler_type=lr_scheduler, num_train_epochs=epochs, max_steps=max_steps,
                     max_length=max_len, packing=packing, gradient_checkpointing=gradient_checkpointing,
                     completion_only_loss=True, bf16=dtype == "bfloat16", fp16=dtype == "float16",
                     use_cpu=device == "cpu", report_to=[], save_strategy="no", eval_strategy="no", logging_steps=1,
                     seed=seed, dataloader_num_workers=0, disable_tqdm=True, max_grad_norm=1.0,
                     weight_decay=0.0, warmup_steps=0)
    peft_cfg = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                          task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=m, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_cfg)

    probe = MemoryProbe("cuda" if device.startswith("cuda") else "mps" if device == "mps" else "cpu")
    marks: dict = {}
    times, tokens, losses, fed = [], [], [], []

    def count(module, a, kwargs):  # real input tokens of this micro-batch, `len - 1` per row like ours
        ids = kwargs.get("input_ids", a[0] if a else None)
        am, pos = kwargs.get("attention_mask"), kwargs.get("position_ids")
        if am is not None:
            n = int(am.sum()) - int((am.sum(-1) > 0).sum())
        elif pos is not None:  # padding-free: one row of concatenated sequences, positions restart at 0
            n = int(ids.numel()) - int((pos == 0).sum())
        else:
            n = int(ids.numel()) - int(ids.shape[0])
        fed.append(n)
    trainer.model.get_base_model().register_forward_pre_hook(count, with_kwargs=True)

    class Clock(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            probe.start()
            marks["t0"] = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            tokens.append(sum(fed))
            fed.clear()

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
    trainer.add_callback(Clock())
    trainer.train()
    n_total = sum(p.numel() for p in trainer.model.parameters())
    n_train = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    lora_dtypes = sorted({str(p.dtype).replace("torch.", "") for n, p in trainer.model.named_parameters()
                          if p.requires_grad})
    peer = {"what": "trl.SFTTrainer + peft.LoraConfig", "dtype": dtype, "bf16": args.bf16, "fp16": args.fp16,
            "quantization": "bitsandbytes nf4 + double quant, compute " + dtype if quant == "4bit" else "none",
            "packing": args.packing, "packing_strategy": getattr(args, "packing_strategy", None) if packing else None,
            "padding_free": getattr(trainer, "padding_free", args.padding_free),
            "train_sampling_strategy": getattr(args, "train_sampling_strategy", None),
            "optim": getattr(args.optim, "value", str(args.optim)),
            "lr_scheduler": getattr(args.lr_scheduler_type, "value", str(args.lr_scheduler_type)), "max_grad_norm": args.max_grad_norm,
            "gradient_checkpointing": args.gradient_checkpointing, "attn_implementation": "sdpa",
            "trainable_param_dtypes": lora_dtypes}
    return _finish("trl", times, tokens, losses, marks["t0"], probe.stop(), peer=peer,
                   total_params=n_total, trainable_params=n_train)


# ---- mlx-lm's trainer --------------------------------------------------------------------------------

def run_mlx_lm(model: str, data: str, *, iters: int, batch: int = 8, lr: float = 2e-4, max_len: int = 512,
               lora_r: int = 16, lora_alpha: float = 32, optimizer: str = "adamw", schedule: str = "linear",
               bias_correction: bool = True, dtype: str | None = None, quant_bits: int = 0, group_size: int = 64,
               seed: int = 0) -> dict:
    """mlx-lm's LoRA training as `mlx_lm.lora` runs it: `mlx_lm.utils.load`, the CLI's dataset loader
    on `data` (a jsonl of prompt/completion rows, `mask_prompt`), `linear_to_lora_layers` on every
    linear layer of every block, and `mlx_lm.tuner.trainer.train` (its compiled step, length-sorted
    batches padded to a multiple of 32, cache cleared every step). `dtype` casts the loaded model
    (None keeps the checkpoint's dtype, as the CLI does); `quant_bits` quantizes the base with
    mlx-lm's own `quantize_model` (what `mlx_lm.convert -q` does) before LoRA. Optimizer:
    `optimizer` (adam | adamw, weight decay 0) with `bias_correction`, under a constant or linear
    (to 0 over `iters`) learning rate; all expressible in an `mlx_lm.lora` YAML config."""
    import types

    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx_lm.tuner.datasets import CacheDataset, create_dataset
    from mlx_lm.tuner.trainer import TrainingArgs, TrainingCallback, iterate_batches, train
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx.utils import tree_flatten
    from mlx_lm.utils import get_total_parameters, load, quantize_model

    model_obj, tok, config = load(model, return_config=True)
    if dtype:
        model_obj.set_dtype(getattr(mx, dtype))
    if quant_bits:
        model_obj, _ = quantize_model(model_obj, config, group_size, quant_bits)
    n_total = get_total_parameters(model_obj)  # the base, as ours counts it
    mx.random.seed(seed)
    model_obj.freeze()
    linear_to_lora_layers(model_obj, len(model_obj.layers), {"rank": lora_r, "scale": lora_alpha / lora_r, "dropout": 0.0})
    rows = [json.loads(x) for x in Path(data).read_text().splitlines() if x.strip()]
    cfg_ns = types.SimpleNamespace(mask_prompt=True, prompt_feature="prompt", completion_feature="completion")
    ds = CacheDataset(create_dataset(rows, tok, cfg_ns))
    lr_sched = optim.linear_schedule(lr, 0.0, iters) if schedule == "linear" else lr
    opt_cls = {"adam": optim.Adam, "adamw": optim.AdamW}[optimizer]
    okw = {"weight_decay": 0.0} if optimizer == "adamw" else {}
    opt = opt_cls(learning_rate=lr_sched, bias_correction=bias_correction, **okw)
    args = TrainingArgs(batch_size=batch, iters=iters, steps_per_report=1, steps_per_save=10 ** 9,
                        steps_per_eval=10 ** 9, max_seq_length=max_len,
                        adapter_file=str(Path(tempfile.mkdtemp(prefix="bench-mlxlm-")) / "adapters.safetensors"))
    probe = MemoryProbe("mlx")
    marks: dict = {}
    times, tokens, losses, fed = [], [], [], []

    def batches(**kw):  # mlx-lm's own batching; counts the real input tokens of each batch it yields
        for b, lengths in iterate_batches(**kw):
            if "t0" not in marks:
                probe.start()
                marks["t0"] = time.perf_counter()
            fed.append(int(mx.minimum(lengths[:, 1], max_len).sum().item()) - int(lengths.shape[0]))
            yield b, lengths

    class Clock(TrainingCallback):
        def on_train_loss_report(self, info):
            times.append(time.perf_counter())
            tokens.append(sum(fed))
            fed.clear()
            losses.append(float(info["train_loss"]))

    n_train = sum(v.size for _, v in tree_flatten(model_obj.trainable_parameters()))
    devnull, stdout = open(os.devnull, "w"), sys.stdout
    sys.stdout = devnull  # its progress UI
    try:
        train(model_obj, opt, ds, None, args=args, iterate_batches=batches, training_callback=Clock())
    finally:
        sys.stdout = stdout
    peer = {"what": "mlx_lm.tuner.trainer.train (the trainer mlx_lm.lora runs)", "dtype": dtype or "checkpoint's",
            "quantization": f"mlx-lm quantize_model affine {quant_bits}-bit group {group_size}" if quant_bits else "none",
            "packing": False, "optimizer": f"{optimizer}(bias_correction={bias_correction}, weight_decay=0)",
            "lr_schedule": schedule, "max_grad_norm": None, "batches": "length-sorted, padded to a multiple of 32",
            "clear_cache_threshold": args.clear_cache_threshold}
    return _finish("mlx_lm", times, tokens, losses, marks["t0"], probe.stop(), peer=peer,
                   total_params=n_total, trainable_params=n_train)


def write_results(path, results) -> None:
    """A benchmark's results as indented JSON at `path` (parent folders made)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=2, default=float))


def mib(b) -> str:
    return "-" if b is None else f"{b / 2 ** 20:,.0f}"
