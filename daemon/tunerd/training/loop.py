"""The one training loop, backend-agnostic: it drives a `Backend` and never imports mlx or torch.

    train(cfg, backend, emit, should_stop, base_dir) -> events.Finished

Life of a run, top to bottom:
  resolve config (debug, output_dir) -> write config.json/.yaml -> backend.load -> data.prepare ->
  backend.add_adapter -> (resume) -> Started -> steps [accumulate micro-batches; normalise by the
  supervised tokens of the whole group; lr from the schedule; clip; step] with logging / eval /
  save cadence, early stopping and cancellation between steps -> best adapter -> final adapter in
  output_dir/adapter/ -> Finished.

Outputs in output_dir: config.json/.yaml (resolved), metrics.jsonl, tensorboard/ event files,
checkpoint-N/ (see checkpoints.py), adapter/ (final; PEFT layout + mlx/ for MLX, see adapter_layout).

Events: emits Started, Log, Step, Eval, CheckpointSaved and Finished (and returns the Finished).
Failures raise (the caller turns them into Failed): `NonFiniteLoss` for NaN/inf, ValueError for
bad config or data. Cancellation (`should_stop()` true between steps) writes a checkpoint and raises
`TrainingCancelled(step, checkpoint)`; the caller emits Cancelled. A cancelled or killed run
continues exactly with `resume_from_checkpoint: latest`.

Exact resume: the batches of epoch e are a pure function of (data seed, e) (data.prepare), the
checkpoint records the epoch and the micro-batches consumed in it, the schedule is a function of
the step (+ plateau state), and the backend restores adapter + optimizer + its RNG.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..backends.base import Backend, ModelSpec
from ..config.loader import ConfigError, validate
from ..config.schema import TrainConfig
from ..data.prepare import iterate_batches, prepare
from ..evaluation.generation import GenerationEval
from . import events as ev
from .flops import flops_per_token
from .memory import Shape, advise, explain_oom, oom_message
from .memory import estimate as memory_estimate
from .checkpoints import PREFIX, STATE_FILE, TrainerState, find_checkpoint, rotate, step_of, write_atomically
from .schedulers import Scheduler, warmup_steps_for
from .tensorboard import EventWriter

DEBUG_TRAIN_ROWS, DEBUG_EVAL_ROWS, DEBUG_BATCH = 50, 10, 2
# Keys that may change between a run and its resume without changing the math.
RESUME_FREE_KEYS = {"output_dir", "resume_from_checkpoint", "logging_steps", "eval_strategy", "eval_steps",
                    "save_strategy", "save_steps", "save_total_limit", "load_best_model_at_end",
                    "early_stopping_patience", "early_stopping_threshold", "max_steps", "num_epochs",
                    "per_device_eval_batch_size", "device", "backend", "eval_generate_rows",
                    "eval_generate_max_tokens", "eval_metric_tokenizer"}


class TrainingCancelled(Exception):
    """should_stop() was seen between steps; `checkpoint` holds the state to resume from."""

    def __init__(self, step: int, checkpoint: str):
        super().__init__(f"training cancelled at step {step}" + (f"; checkpoint {checkpoint}" if checkpoint else ""))
        self.step, self.checkpoint = step, checkpoint


class NonFiniteLoss(RuntimeError):
    """The loss or gradient norm became NaN/inf."""


def resolve_config(cfg: TrainConfig, base_dir: Optional[Path] = None) -> TrainConfig:
    """Apply debug mode and make output_dir absolute (relative paths resolve against base_dir)."""
    if not cfg.output_dir:
        raise ValueError("output_dir: not set; the caller must choose one (e.g. $TUNER_HOME/runs/<job>)")
    out = Path(cfg.output_dir).expanduser()
    if not out.is_absolute():
        out = Path(base_dir or ".").resolve() / out
    cfg = dataclasses.replace(cfg, output_dir=str(out))
    if cfg.debug:
        cfg = dataclasses.replace(cfg, num_epochs=1.0, max_steps=-1, per_device_train_batch_size=DEBUG_BATCH)
    problems = validate(cfg)  # the loader's validator (submit ran it too)
    if problems:
        raise ConfigError(problems)
    return cfg


# packing: auto -- on where packed batches were measured faster than length-grouped padded ones
# (GPUs: 2.3x TRL's tokens/s on a 1B model, DESIGN.md §2), off on a CPU, where the longer packed
# rows make attention cost more than the padding they save (bench/bench_torch.py, bench_scale.py).
def resolve_packing(requested, info) -> tuple[bool, str]:
    if requested is True or requested is False:
        return requested, "set in the config"
    if not info.packing_supported:
        return False, f"model type {info.config.get('model_type')!r} cannot be packed exactly on {info.backend}"
    if info.device_kind == "cpu":
        return False, "off on a CPU, where packed batches were measured slower than length-grouped ones"
    return True, f"on for {info.device_kind}, where packed batches were measured faster (same loss)"


def config_identity(cfg: TrainConfig) -> tuple[dict, str]:
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUME_FREE_KEYS}
    text = json.dumps(d, sort_keys=True, default=str)
    return json.loads(text), hashlib.sha256(text.encode()).hexdigest()[:16]


def write_resolved_config(cfg: TrainConfig, out: Path) -> None:
    d = dataclasses.asdict(cfg)
    (out / ".config.json.tmp").write_text(json.dumps(d, indent=2, default=str))
    (out / ".config.json.tmp").replace(out / "config.json")
    try:
        import yaml
    except ImportError:  # pragma: no cover
        return
    (out / ".config.yaml.tmp").write_text(yaml.safe_dump(json.loads(json.dumps(d, default=str)), sort_keys=False))
    (out / ".config.yaml.tmp").replace(out / "config.yaml")


class MetricsLog:
    """output_dir/metrics.jsonl: one JSON record per logged step and per eval."""

    def __init__(self, path: Path, resume_step: Optional[int]):
        self.path = path
        if resume_step is not None and path.exists():  # drop records after the checkpoint we resume from
            keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            path.write_text("".join(ln + "\n" for ln in keep))
        elif resume_step is None and path.exists():
            path.unlink()

    def write(self, kind: str, event) -> None:
        rec = {"type": kind, **dataclasses.asdict(event), "time": time.time()}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, default=float) + "\n")


def _better(a: float, b: Optional[float], greater: bool) -> bool:
    return b is None or (a > b if greater else a < b)


def train(cfg: TrainConfig, backend: Backend, emit: Callable[[object], None],
          should_stop: Callable[[], bool] = lambda: False, base_dir: Optional[Path] = None) -> ev.Finished:
    cfg = resolve_config(cfg, base_dir)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % (2 ** 32))

    # ---- model, data, adapter -----------------------------------------------------------------
    info = backend.load(ModelSpec.from_config(cfg))
    packing, packing_reason = resolve_packing(cfg.packing, info)
    cfg = dataclasses.replace(cfg, dtype=info.dtype, packing=packing)
    write_resolved_config(cfg, out)
    data = prepare(cfg, backend.tokenizer, Path(base_dir) if base_dir else None)
    train_rows, eval_rows = list(data.train), list(data.validation)
    if cfg.debug:
        train_rows, eval_rows = train_rows[:DEBUG_TRAIN_ROWS], eval_rows[:DEBUG_EVAL_ROWS]
    if not train_rows:
        raise ValueError("data.train: no training rows after preparation")
    if data.report.get("added_tokens"):
        if not backend.supports_added_tokens:
            raise ValueError(f"data.template: the chat template needs {data.report['added_tokens']} new special "
                             f"tokens ({data.report.get('added_token_list')}), and the {info.backend} backend cannot "
                             f"add tokens yet; use a model whose tokenizer has them or data.template: auto")
        tok = backend.tokenizer
        backend.resize_token_embeddings(
            len(tok), token_ids=[int(i) for i in tok.convert_tokens_to_ids(data.report["added_token_list"])],
            end_of_turn=data.report.get("end_of_turn_token"), chat_template=data.report.get("chat_template"))
    stats = backend.add_adapter(cfg)
    for w in backend.warnings:  # set-up warnings (e.g. MLX on a reference BLAS)
        emit(ev.Log("warning", w))
    tok = backend.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (info.eos_token_ids or [0])[0]
    data_seed = cfg.data.seed if cfg.data.seed is not None else cfg.seed
    bs, gas = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps

    def epoch_batches(epoch: int):
        return iterate_batches(train_rows, bs, pad_id, packing=cfg.packing, max_seq_length=cfg.max_seq_length,
                               shuffle=True, seed=data_seed, epoch=epoch,
                               group_by_length=getattr(cfg.data, "group_by_length", True))

    eval_batches = iterate_batches(eval_rows, cfg.per_device_eval_batch_size, pad_id, packing=False,
                                   max_seq_length=cfg.max_seq_length, shuffle=False) if eval_rows else []
    gen_eval = GenerationEval.for_training(cfg, tok, Path(base_dir) if base_dir else None) \
        if eval_batches and cfg.eval_generate_rows > 0 else None   # eval_rouge*, eval_bleu at each eval
    if not eval_batches and cfg.eval_strategy != "no":
        emit(ev.Log("warning", "no validation rows: evaluation is skipped"))

    # micro-batches per epoch (with packing the count can vary a little from epoch to epoch;
    # the total is planned from epoch 0, epoch boundaries follow each epoch's own batches)
    first_epoch = epoch_batches(0)
    n_micro = len(first_epoch)
    widest = max(first_epoch, key=lambda b: b.inputs.size)
    need = None   # the estimate for the widest batch (None: an architecture training/memory.py cannot read)
    if Shape.known(info.config):
        need = memory_estimate(info.config, cfg, info.backend, widest.inputs.shape[1], info.dtype,
                               batch_size=widest.inputs.shape[0], device_kind=info.device_kind,
                               supervised_fraction=sum(b.n_targets for b in first_epoch)
                               / max(sum(b.inputs.size for b in first_epoch), 1))

    def out_of_memory(cause: str) -> str:
        options = []
        if need is not None:
            reached = backend.memory().peak_bytes or need.total   # the budget the allocator ran out of
            options = advise(info.config, cfg, info.backend, widest.inputs.shape[1], int(0.9 * reached),
                             info.dtype, device_kind=info.device_kind)
        return oom_message(f"out of memory at step {state.global_step + 1} ({cause.splitlines()[0][:200]})",
                           need, options)
    steps_per_epoch = math.ceil(n_micro / gas)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.num_epochs * steps_per_epoch))
    sched = Scheduler(cfg.lr_scheduler_type, cfg.learning_rate, total_steps,
                      warmup_steps_for(total_steps, cfg.warmup_steps, cfg.warmup_ratio), cfg.lr_scheduler_kwargs)
    ident, ident_hash = config_identity(cfg)
    state = TrainerState(total_steps=total_steps, config_hash=ident_hash, config=ident)

    # ---- resume -------------------------------------------------------------------------------
    resumed_from = 0
    ckpt = find_checkpoint(cfg.resume_from_checkpoint, out, Path(base_dir) if base_dir else None)
    if cfg.resume_from_checkpoint == "latest" and ckpt is None:
        emit(ev.Log("info", f"resume_from_checkpoint latest: no checkpoint in {out}; starting from step 0"))
    if ckpt is not None:
        saved = TrainerState.read(ckpt)
        if saved.config_hash != ident_hash:
            changed = sorted(k for k in set(ident) | set(saved.config) if ident.get(k) != saved.config.get(k))
            emit(ev.Log("warning", f"resuming {ckpt.name} with a changed config: {', '.join(changed)}; "
                                   f"losses will not match an uninterrupted run"))
        backend.load_checkpoint(ckpt)
        saved.total_steps, saved.config_hash, saved.config = total_steps, ident_hash, ident
        state = saved
        sched.load_state_dict(state.scheduler)
        state.restore_rng()
        resumed_from = state.global_step
        emit(ev.Log("info", f"resumed from {ckpt} at step {resumed_from}"))
    metrics = MetricsLog(out / "metrics.jsonl", resumed_from if ckpt is not None else None)
    board = EventWriter(out / "tensorboard")

    peak_flops = backend.peak_flops()
    trainable_fraction = stats.trainable / max(stats.total, 1)
    emit(ev.Started(backend=info.backend, device=info.device, model=info.model, total_steps=total_steps,
                    num_epochs=(total_steps / steps_per_epoch) if cfg.max_steps > 0 else cfg.num_epochs,
                    train_rows=len(train_rows), eval_rows=len(eval_rows), total_params=stats.total,
                    trainable_params=stats.trainable, trainable_percent=round(stats.trainable_percent, 4),
                    estimated_peak_memory_bytes=need.total if need else 0,
                    output_dir=str(out), resumed_from_step=resumed_from, dtype=info.dtype,
                    dtype_reason=info.dtype_reason, packing=packing, packing_reason=packing_reason,
                    peak_tflops=peak_flops / 1e12))

    greater = cfg.greater_is_better
    metric_name = cfg.metric_for_best_model or "eval_loss"
    if not metric_name.startswith("eval_"):
        metric_name = "eval_" + metric_name
    if greater is None:
        greater = not (metric_name.endswith("loss") or metric_name.endswith("perplexity"))

    # ---- helpers --------------------------------------------------------------------------------
    def evaluate() -> Optional[ev.Eval]:
        if not eval_batches:
            return None
        total, n = 0.0, 0
        for b in eval_batches:
            s, k = backend.eval_loss(b)
            total, n = total + s, n + k
        loss = total / max(n, 1)
        ppl = math.exp(loss) if loss < 700 else float("inf")
        gen = gen_eval.metrics(backend) if gen_eval else {}
        e = ev.Eval(step=state.global_step, epoch=epoch_float(), eval_loss=loss, perplexity=ppl,
                    metrics={"eval_loss": loss, "eval_perplexity": ppl, "eval_tokens": n, **gen})
        emit(e)
        metrics.write("eval", e)
        board.scalars(e.step, {"eval/loss": loss, "eval/perplexity": min(ppl, 1e30),
                               **{"eval/" + k[5:]: v for k, v in gen.items()}})
        return e

    def epoch_float() -> float:
        return state.epoch + state.batch_in_epoch / max(len(batches) if batches else n_micro, 1)

    def save(metric: Optional[float]) -> str:
        state.scheduler = sched.state_dict()
        state.capture_rng()
        is_best = metric is not None and _better(metric, state.best_metric, greater)
        final = out / f"{PREFIX}{state.global_step}"
        if is_best:
            state.best_metric, state.best_checkpoint = metric, str(final)

        def fill(tmp: Path):
            backend.save_checkpoint(tmp)
            (tmp / STATE_FILE).write_text(state.to_json())
        write_atomically(final, fill)
        emit(ev.CheckpointSaved(step=state.global_step, path=str(final), is_best=is_best))
        for p in rotate(out, cfg.save_total_limit, keep=(state.best_checkpoint,)):
            emit(ev.Log("info", f"removed {p.name} (save_total_limit={cfg.save_total_limit})"))
        return str(final)

    # ---- the loop -----------------------------------------------------------------------------
    t_start = time.perf_counter()
    steps_this_run = 0
    window = {"loss": 0.0, "steps": 0, "tokens": 0, "flops": 0.0, "t0": time.perf_counter()}
    last_grad_norm = 0.0
    stopped_early = False
    batches, batches_epoch = None, -1

    with explain_oom(out_of_memory):   # an allocator OOM ends the job with what would fit
        while state.global_step < total_steps and not stopped_early:
            if should_stop():
                path = save(None) if state.global_step > 0 else ""
                raise TrainingCancelled(state.global_step, path)
            if batches_epoch != state.epoch:
                batches, batches_epoch = epoch_batches(state.epoch), state.epoch
            group = batches[state.batch_in_epoch: state.batch_in_epoch + gas]
            n_targets = sum(b.n_targets for b in group)
            loss_sum = 0.0
            for b in group:
                s, _ = backend.forward_backward(b)
                loss_sum += s
            step_no = state.global_step + 1
            loss = loss_sum / max(n_targets, 1)
            if not math.isfinite(loss):
                raise NonFiniteLoss(f"step {step_no}: training loss is {loss} (learning_rate={cfg.learning_rate}, "
                                    f"dtype={cfg.dtype}); lower the learning rate, use float32/bfloat16, or check the data")
            lr = sched.lr_at(state.global_step)
            grad_norm = backend.optimizer_step(lr, 1.0 / max(n_targets, 1), cfg.max_grad_norm)
            if not math.isfinite(grad_norm):
                raise NonFiniteLoss(f"step {step_no}: gradient norm is {grad_norm} at loss {loss:.4f}; "
                                    f"lower the learning rate or set max_grad_norm")
            last_grad_norm = grad_norm
            tokens = sum(b.n_tokens for b in group)
            state.global_step, state.last_loss = step_no, loss
            state.trained_tokens += tokens
            state.batch_in_epoch += len(group)
            epoch_end = state.batch_in_epoch >= len(batches)
            if epoch_end:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            steps_this_run += 1
            window["loss"] += loss
            window["steps"] += 1
            window["tokens"] += tokens
            window["flops"] += sum(b.n_tokens * flops_per_token(info.config, b.mean_context, trainable_fraction,
                                                                 full=cfg.peft_adapter == "full") for b in group)
            last = state.global_step >= total_steps

            if state.global_step % cfg.logging_steps == 0 or last:
                now = time.perf_counter()
                elapsed = now - t_start
                achieved = window["flops"] / max(now - window["t0"], 1e-9)
                step_ev = ev.Step(step=state.global_step, total_steps=total_steps, epoch=epoch_float(),
                                  loss=window["loss"] / window["steps"], learning_rate=lr, grad_norm=last_grad_norm,
                                  tokens_per_second=window["tokens"] / max(now - window["t0"], 1e-9),
                                  trained_tokens=state.trained_tokens, peak_memory_bytes=backend.memory().peak_bytes,
                                  eta_seconds=elapsed / steps_this_run * (total_steps - state.global_step),
                                  elapsed_seconds=elapsed, tflops=achieved / 1e12,
                                  mfu=achieved / peak_flops if peak_flops > 0 else 0.0)
                emit(step_ev)
                metrics.write("train", step_ev)
                board.scalars(step_ev.step, {"train/loss": step_ev.loss, "train/learning_rate": lr,
                                             "train/grad_norm": last_grad_norm, "train/epoch": step_ev.epoch,
                                             "train/tokens_per_second": step_ev.tokens_per_second,
                                             "train/tflops": step_ev.tflops, "train/mfu": step_ev.mfu})
                window.update(loss=0.0, steps=0, tokens=0, flops=0.0, t0=now)

            do_eval = (cfg.eval_strategy == "steps" and (state.global_step % cfg.eval_steps == 0 or last)) or \
                      (cfg.eval_strategy == "epoch" and (epoch_end or last))
            do_save = (cfg.save_strategy == "steps" and (state.global_step % cfg.save_steps == 0 or last)) or \
                      (cfg.save_strategy == "epoch" and (epoch_end or last))
            metric = None
            if do_eval and (e := evaluate()) is not None:
                metric = e.metrics.get(metric_name)
                if metric is None:
                    raise ValueError(f"metric_for_best_model: {cfg.metric_for_best_model!r} is not an eval metric; "
                                     f"choose one of {', '.join(sorted(e.metrics))}")
                sched.on_eval(e.eval_loss)
                improved = state.best_eval_metric is None or (
                    _better(metric, state.best_eval_metric, greater)
                    and abs(metric - state.best_eval_metric) > cfg.early_stopping_threshold)
                if improved:
                    state.best_eval_metric, state.evals_without_improvement = metric, 0
                else:
                    state.evals_without_improvement += 1
                if cfg.early_stopping_patience is not None and state.evals_without_improvement >= cfg.early_stopping_patience:
                    stopped_early = True
                    emit(ev.Log("info", f"early stopping at step {state.global_step}: {metric_name} did not improve "
                                        f"for {state.evals_without_improvement} evaluations"))
            if do_save or (stopped_early and cfg.save_strategy != "no"):
                save(metric)

    # ---- the end ------------------------------------------------------------------------------
    if cfg.load_best_model_at_end and state.best_checkpoint and Path(state.best_checkpoint).exists():
        if step_of(Path(state.best_checkpoint)) != state.global_step:
            backend.load_checkpoint(Path(state.best_checkpoint))
        emit(ev.Log("info", f"loaded the best checkpoint {Path(state.best_checkpoint).name} "
                            f"({metric_name}={state.best_metric:.4f})"))
    adapter_dir = write_atomically(out / "adapter", backend.save_adapter)
    finished = ev.Finished(adapter_path=str(adapter_dir), output_dir=str(out), steps=state.global_step,
                           final_loss=state.last_loss, best_checkpoint=state.best_checkpoint,
                           best_metric=state.best_metric, peak_memory_bytes=backend.memory().peak_bytes,
                           stopped_early=stopped_early)
    emit(finished)
    return finished
