"""The one training loop, backend-agnostic: it drives a `Backend` and never imports mlx or torch.

    train(cfg, backend, emit, should_stop, base_dir, rank=0, world_size=1) -> events.Finished

No network here: a hub model is in the local cache before the loop runs (jobs/runner.py fetches it).
`Trainer.run()` is the life of a run, top to bottom, one method per phase:
  set up the model (backend.load, packing, the resolved config.json/.yaml) -> the data (tokenized
  rows; new chat tokens grow the vocabulary) -> the adapter -> the batches (this rank's shard of
  every step) -> the plan (memory estimate, total steps, schedule) -> resume -> Started ->
  steps [accumulate micro-batches; normalise by the supervised tokens of the whole step; lr from
  the schedule; clip; step], each followed by maybe log / maybe evaluate (evals.py: early
  stopping) / maybe save; cancellation between steps -> finish (best adapter, final adapter in
  output_dir/adapter/).

Outputs in output_dir: config.json/.yaml (resolved), metrics.jsonl, tensorboard/ event files
(outputs.py), checkpoint-N/ (checkpoints.py), adapter/ (final; PEFT layout + mlx/ for MLX, see
adapter_layout). With several ranks only rank 0 writes them (they are shared). The folder is a
job's (its marker names the job: outputs.claim_output_dir); checkpoints and the adapter are marked
as that job's (files.write_output_dir), and rotation deletes only those.

Events: emits Started, Log, Step, Eval, CheckpointSaved and Finished (and returns the Finished).
Failures raise (the caller turns them into Failed): `NonFiniteLoss` for NaN/inf, ValueError for
bad config or data, DoesNotFit for an allocator's out-of-memory (with what would fit).
Cancellation (`should_stop()` true between steps) writes a checkpoint and raises
`TrainingCancelled(step, checkpoint)`; the caller emits Cancelled. A cancelled or killed run
continues exactly with `resume_from_checkpoint: latest`.

Exact resume: the batches of epoch e are a pure function of (data seed, e) (data.TrainBatches), the
checkpoint records the epoch and the micro-batches consumed in it, the schedule is a function of
the step (+ plateau state), and the backend restores adapter + optimizer + its RNG.

Several ranks (DESIGN.md §9, launched by tunerd.distributed): every rank builds the same batches;
a step is accumulation x world_size micro-batches, of which each rank runs its `Shard`; the loss
is normalised by the whole step's supervised tokens. The engine sums the gradients across ranks
(distributed/sync.py wraps the backend) and `all_sum` the step's loss sum; with world_size 1 (the
default) both are the identity.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..backends.base import Backend, ModelInfo, ModelSpec, ParamStats
from ..config.schema import TrainConfig
from ..data.batch import Shard, pad_id_of
from ..data.prepare import StepBatches, TrainBatches, prepare
from ..disk import writing
from ..evaluation.retain import many_passes_warnings
from ..files import write_output_dir
from ..tasks import Task, get_task
from . import events as ev
from .checkpoints import (TrainerState, checkpoint_bytes, checkpoint_path, resume_point, rotate, save_checkpoint,
                          step_of)
from .evals import TrainingEval, better
from .flops import flops_per_token
from .memory import Shape, advise, explain_oom, oom_message
from .memory import estimate as memory_estimate
from .outputs import ADAPTER, RunLog, claim_output_dir, write_resolved_config
from .run_config import add_tokens, config_identity, remote_code_warning, resolve_config, resolve_packing
from .schedulers import Scheduler, warmup_steps_for


log = logging.getLogger(__name__)


class TrainingCancelled(Exception):
    """should_stop() was seen between steps; `checkpoint` holds the state to resume from."""

    def __init__(self, step: int, checkpoint: str):
        super().__init__(f"training cancelled at step {step}" + (f"; checkpoint {checkpoint}" if checkpoint else ""))
        self.step, self.checkpoint = step, checkpoint


class NonFiniteLoss(RuntimeError):
    """The loss or gradient norm became NaN/inf."""


@dataclasses.dataclass
class _Window:
    """What the steps since the last Step event add up to (their mean loss, tokens/s, FLOP/s)."""
    t0: float
    loss: float = 0.0
    steps: int = 0
    tokens: int = 0
    flops: float = 0.0
    metrics: dict = dataclasses.field(default_factory=dict)   # the task's, summed over the steps


class Trainer:
    """One training run. `run()` reads top to bottom; each phase below is one method, in order,
    and sets the attributes the later ones use:"""
    info: ModelInfo                  # setup_model: what backend.load found (dtype, device, config.json)
    train_rows: list                 # setup_data: tokenized rows with loss masks
    eval_rows: list
    params: ParamStats               # setup_adapter: total / trainable parameters
    data: TrainBatches               # setup_batches: this rank's steps, epoch by epoch
    evals: TrainingEval              #   ... and the evaluation's batches, best-model metric (evals.py)
    total_steps: int                 # plan: also steps_per_epoch, sched, the memory estimate (need, widest)
    state: TrainerState              #   ... and the trainer state, replaced by resume's
    log: RunLog                      # resume: metrics.jsonl + tensorboard/, cut back to the resumed step
    task: Task                       # tunerd/tasks: the rows' batches, the loss, its metrics and eval

    def __init__(self, cfg: TrainConfig, backend: Backend, emit: Callable[[object], None],
                 should_stop: Callable[[], bool] = lambda: False, base_dir: Optional[Path] = None,
                 shard: Shard = Shard(), validated: bool = False, all_sum: Callable[[float], float] = float):
        self.cfg = resolve_config(cfg, base_dir, validated)
        self.task = get_task(self.cfg)
        self.all_sum = all_sum   # a float summed across the ranks (distributed/sync.py)
        self.accumulation = self.cfg.gradient_accumulation_steps * shard.world_size   # micro-batches a step
        self.backend, self.emit, self.should_stop, self.shard = backend, emit, should_stop, shard
        self.base_dir = Path(base_dir) if base_dir else None
        self.out = Path(self.cfg.output_dir)
        self.writer = shard.writes_shared_files
        self.stopped_early = False
        self.job = ""

    def run(self) -> ev.Finished:
        if self.writer:   # the job whose folder it is (the daemon marked it at submit)
            self.job = claim_output_dir(self.out)
        else:
            self.out.mkdir(parents=True, exist_ok=True)
        random.seed(self.cfg.seed)
        np.random.seed(self.cfg.seed % (2 ** 32))
        self.setup_model()
        self.setup_data()
        self.setup_adapter()
        self.setup_batches()
        self.plan()
        self.resume()
        self.start()
        with explain_oom(self.out_of_memory):   # an allocator OOM ends the job with what would fit
            while self.state.global_step < self.total_steps and not self.stopped_early:
                self.stop_if_asked()
                step = self.step()
                self.maybe_log()
                metric = self.maybe_evaluate(step)
                self.maybe_save(step, metric)
        return self.finish()

    # ---- set-up -------------------------------------------------------------------------------
    def setup_model(self) -> None:
        """Load the model (a hub model is in the cache already: jobs/runner.py fetched it); decide
        packing; write the resolved config."""
        self.warnings = [remote_code_warning(self.cfg.model)] if self.cfg.trust_remote_code else []
        for w in self.warnings:
            log.warning("%s", w)
        self.info = info = self.backend.load(ModelSpec.from_config(self.cfg))
        packing, self.packing_reason = resolve_packing(self.cfg.packing, info) if self.task.packs else \
            (False, f"task {self.task.name} does not pack its rows")
        self.cfg = dataclasses.replace(self.cfg, dtype=info.dtype, packing=packing)
        if self.writer:
            with writing(self.out / "config.json", 1 << 16):
                write_resolved_config(self.cfg, self.out)

    def setup_data(self) -> None:
        """Tokenize both splits with loss masks; chat tokens the template adds grow the vocabulary."""
        data = prepare(self.cfg, self.backend.tokenizer, self.base_dir)
        self.task.check_data(data.report)
        self.train_rows, self.eval_rows = list(data.train), list(data.validation)
        if not self.train_rows:
            raise ValueError("data.train: no training rows after preparation")
        if data.report.get("added_tokens"):   # the backend grows its embeddings (and head) by them
            add_tokens(self.backend, data.report)

    def setup_adapter(self) -> None:
        """LoRA / DoRA / full fine-tuning on top of the model; the backend's set-up warnings."""
        self.params = self.backend.add_adapter(self.cfg)
        for w in self.backend.warnings:  # set-up warnings (e.g. MLX on a reference BLAS)
            self.emit(ev.Log("warning", w))

    def setup_batches(self) -> None:
        """This rank's training steps, the evaluation batches and the generation metrics' rows."""
        cfg, tok = self.cfg, self.backend.tokenizer
        pad_id = pad_id_of(tok, self.info.eos_token_ids)
        self.data = TrainBatches(self.train_rows, cfg.per_device_train_batch_size, self.accumulation,
                                 pad_id, packing=cfg.packing, max_seq_length=cfg.max_seq_length,
                                 seed=cfg.data.seed if cfg.data.seed is not None else cfg.seed,
                                 group_by_length=cfg.data.group_by_length, shard=self.shard, iterate=self.task.iterate)
        self.evals = TrainingEval(cfg, tok, self.eval_rows, pad_id, self.base_dir, self.backend, self.task)
        if not self.evals.batches and cfg.eval_strategy != "no":
            self.emit(ev.Log("warning", "no validation rows: evaluation is skipped"))

    def plan(self) -> None:
        """Memory estimate of the widest batch, total steps, the schedule, a fresh trainer state.
        The total is planned from epoch 0 (with packing later epochs may differ by a batch or two)."""
        cfg, info = self.cfg, self.info
        first_epoch = self.data.epoch(0)
        self.widest = max(first_epoch, key=lambda b: b.inputs.size)
        self.need = None   # None: an architecture training/memory.py cannot read
        if Shape.known(info.config):
            self.need = memory_estimate(info.config, cfg, info.backend, self.widest.inputs.shape[1], info.dtype,
                                        batch_size=self.widest.inputs.shape[0], device_kind=info.device_kind,
                                        supervised_fraction=sum(b.n_targets for b in first_epoch)
                                        / max(sum(b.inputs.size for b in first_epoch), 1))
        self.steps_per_epoch = math.ceil(len(first_epoch) / self.accumulation)
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else \
            max(1, math.ceil(cfg.num_epochs * self.steps_per_epoch))
        self.sched = Scheduler(cfg.lr_scheduler_type, cfg.learning_rate, self.total_steps,
                               warmup_steps_for(self.total_steps, cfg.warmup_steps, cfg.warmup_ratio),
                               cfg.lr_scheduler_kwargs)
        self.identity, self.identity_hash = config_identity(cfg)
        self.state = TrainerState(total_steps=self.total_steps, config_hash=self.identity_hash, config=self.identity)

    def resume(self) -> None:
        """Continue from resume_from_checkpoint: adapter, optimizer, schedule, RNG and data position."""
        ckpt, saved, notes = resume_point(self.cfg.resume_from_checkpoint, self.out, self.base_dir, self.identity,
                                          self.identity_hash, self.total_steps)
        for level, note in notes:   # no checkpoint for `latest`, a changed config
            self.emit(ev.Log(level, note))
        self.resumed_from = 0
        if saved is not None:
            self.backend.load_checkpoint(ckpt)
            self.state = saved
            self.sched.load_state_dict(saved.scheduler)
            saved.restore_rng()
            self.resumed_from = saved.global_step
            self.emit(ev.Log("info", f"resumed from {ckpt} at step {self.resumed_from}"))
        self.log = RunLog(self.out, self.resumed_from if ckpt is not None else None, writer=self.writer)

    def start(self) -> None:
        """Started (what the run is, before its first step); the clocks of tokens/s, ETA and MFU."""
        cfg, info, params = self.cfg, self.info, self.params
        self.peak_flops = self.backend.peak_flops()
        self.trainable_fraction = params.trainable / max(params.total, 1)
        self.emit(ev.Started(
            backend=info.backend, device=info.device, model=info.model, total_steps=self.total_steps,
            num_epochs=(self.total_steps / self.steps_per_epoch) if cfg.max_steps > 0 else cfg.num_epochs,
            train_rows=len(self.train_rows), eval_rows=len(self.eval_rows), total_params=params.total,
            trainable_params=params.trainable, trainable_percent=round(params.trainable_percent, 4),
            estimated_peak_memory_bytes=self.need.total if self.need else 0,
            output_dir=str(self.out), resumed_from_step=self.resumed_from, dtype=info.dtype,
            dtype_reason=info.dtype_reason, packing=cfg.packing, packing_reason=self.packing_reason,
            peak_tflops=self.peak_flops / 1e12, warnings=self.warnings + many_passes_warnings(   # forgetting
                self.total_steps / self.steps_per_epoch, len(self.train_rows), bool(cfg.data.retain)),
            world_size=self.shard.world_size, global_batch_size=cfg.per_device_train_batch_size * self.accumulation,
            distributed_backend=cfg.distributed.backend if cfg.distributed and self.shard.world_size > 1 else ""))
        self.t_start = time.perf_counter()
        self.steps_this_run = 0
        self.window = _Window(t0=time.perf_counter())
        self.lr = self.grad_norm = 0.0

    # ---- one step and what follows it -----------------------------------------------------------
    def stop_if_asked(self) -> None:
        """Cancellation, checked between steps: checkpoint (after step 0) and raise TrainingCancelled."""
        if self.should_stop():
            path = self.save(None) if self.state.global_step > 0 else ""
            raise TrainingCancelled(self.state.global_step, path)

    def step(self) -> StepBatches:
        """Forward/backward over this rank's micro-batches of the step (the task's), the loss and
        the task's metrics normalised by the whole step's (SFT: supervised tokens; DPO: pairs), then
        one optimizer update; advances the data position."""
        cfg, st, w = self.cfg, self.state, self.window
        step = self.data.step(st.epoch, st.batch_in_epoch)
        norm = self.task.normaliser(step)
        loss_sum, sums = 0.0, {}
        for b in step.mine:
            s, metrics = self.task.forward_backward(self.backend, b, step)
            loss_sum += s
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
        for k in self.task.metric_names:   # in one order on every rank: each is a collective
            w.metrics[k] = w.metrics.get(k, 0.0) + self.all_sum(sums.get(k, 0.0)) / norm
        step_no = st.global_step + 1
        loss = self.all_sum(loss_sum) / norm
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"step {step_no}: training loss is {loss} (learning_rate={cfg.learning_rate}, "
                                f"dtype={cfg.dtype}); lower the learning rate, use float32/bfloat16, or check the data")
        lr = self.sched.lr_at(st.global_step)
        grad_norm = self.backend.optimizer_step(lr, 1.0 / norm, cfg.max_grad_norm)
        if not math.isfinite(grad_norm):
            raise NonFiniteLoss(f"step {step_no}: gradient norm is {grad_norm} at loss {loss:.4f}; "
                                f"lower the learning rate or set max_grad_norm")
        self.lr, self.grad_norm = lr, grad_norm
        st.global_step, st.last_loss = step_no, loss
        st.trained_tokens += step.n_tokens
        st.batch_in_epoch += len(step.batches)
        if step.ends_epoch:
            st.epoch, st.batch_in_epoch = st.epoch + 1, 0
        self.steps_this_run += 1
        w.loss, w.steps, w.tokens = w.loss + loss, w.steps + 1, w.tokens + step.n_tokens
        w.flops += sum(b.n_tokens * flops_per_token(self.info.config, b.mean_context, self.trainable_fraction,
                                                    full=cfg.full_finetune) for b in step.batches)
        return step

    @property
    def last_step(self) -> bool:
        return self.state.global_step >= self.total_steps

    def due(self, strategy: str, every: int, step: StepBatches) -> bool:
        """An eval or save cadence (no | steps | epoch) after `step`; the last step is always due."""
        if strategy == "steps":
            return self.state.global_step % every == 0 or self.last_step
        return strategy == "epoch" and (step.ends_epoch or self.last_step)

    def epoch_float(self) -> float:
        return self.data.progress(self.state.epoch, self.state.batch_in_epoch)

    def maybe_log(self) -> None:
        """A Step event (means over the steps since the last one) every logging_steps and at the end."""
        st, w = self.state, self.window
        if not (st.global_step % self.cfg.logging_steps == 0 or self.last_step):
            return
        now = time.perf_counter()
        elapsed = now - self.t_start
        achieved = w.flops / max(now - w.t0, 1e-9)
        e = ev.Step(step=st.global_step, total_steps=self.total_steps, epoch=self.epoch_float(),
                    loss=w.loss / w.steps, learning_rate=self.lr, grad_norm=self.grad_norm,
                    tokens_per_second=w.tokens / max(now - w.t0, 1e-9),
                    trained_tokens=st.trained_tokens, peak_memory_bytes=self.backend.memory().peak_bytes,
                    eta_seconds=elapsed / self.steps_this_run * (self.total_steps - st.global_step),
                    elapsed_seconds=elapsed, tflops=achieved / 1e12,
                    mfu=achieved / self.peak_flops if self.peak_flops > 0 else 0.0,
                    metrics={k: v / w.steps for k, v in w.metrics.items()})
        self.emit(e)
        self.log.record("train", e, {"train/loss": e.loss, "train/learning_rate": self.lr,
                                     "train/grad_norm": self.grad_norm, "train/epoch": e.epoch,
                                     "train/tokens_per_second": e.tokens_per_second,
                                     "train/tflops": e.tflops, "train/mfu": e.mfu,
                                     **{"train/" + k: v for k, v in e.metrics.items()}})
        self.window = _Window(t0=now)

    def maybe_evaluate(self, step: StepBatches) -> Optional[float]:
        """Evaluate on the eval cadence; returns the best-model metric (None when not evaluated) and
        sets `stopped_early` when it has not improved for early_stopping_patience evaluations."""
        if not self.due(self.cfg.eval_strategy, self.cfg.eval_steps, step) or (e := self.evaluate()) is None:
            return None
        metric, stop = self.evals.judge(e, self.state)
        self.sched.on_eval(e.eval_loss)
        if stop:
            self.stopped_early = True
            self.emit(ev.Log("info", f"early stopping at step {self.state.global_step}: {self.evals.metric_name} "
                                     f"did not improve for {self.state.evals_without_improvement} evaluations"))
        return metric

    def evaluate(self) -> Optional[ev.Eval]:
        """Loss and perplexity on the eval batches (+ generation metrics), as an Eval event."""
        e = self.evals.run(self.backend, self.state.global_step, self.epoch_float())
        if e is not None:
            self.emit(e)
            self.log.record("eval", e, self.evals.scalars(e))
        return e

    def maybe_save(self, step: StepBatches, metric: Optional[float]) -> None:
        cfg = self.cfg
        if self.due(cfg.save_strategy, cfg.save_steps, step) or (self.stopped_early and cfg.save_strategy != "no"):
            self.save(metric)

    def save(self, metric: Optional[float]) -> str:
        """checkpoint-<step>/ (rank 0 writes it), the best one tracked, the oldest rotated out."""
        st = self.state
        st.scheduler = self.sched.state_dict()
        st.capture_rng()
        is_best = metric is not None and better(metric, st.best_metric, self.evals.greater)
        if is_best:
            st.best_metric, st.best_checkpoint = metric, str(checkpoint_path(self.out, st.global_step))
        with writing(checkpoint_path(self.out, st.global_step), checkpoint_bytes(self.out, self.params.trainable)):
            path = save_checkpoint(self.out, st, self.backend.save_checkpoint, self.shard.rank, self.job)
        self.emit(ev.CheckpointSaved(step=st.global_step, path=str(path), is_best=is_best))
        for p in rotate(self.out, self.cfg.save_total_limit, keep=(st.best_checkpoint,), rank=self.shard.rank,
                        job=self.job):
            self.emit(ev.Log("info", f"removed {p.name} (save_total_limit={self.cfg.save_total_limit})"))
        return str(path)

    def out_of_memory(self, cause: str) -> str:
        """The failure message for an allocator OOM: the estimate and the settings that would fit."""
        options, info = [], self.info
        if self.need is not None:
            reached = self.backend.memory().peak_bytes or self.need.total   # the budget the allocator ran out of
            options = advise(info.config, self.cfg, info.backend, self.widest.inputs.shape[1], int(0.9 * reached),
                             info.dtype, device_kind=info.device_kind)
        return oom_message(f"out of memory at step {self.state.global_step + 1} ({cause.splitlines()[0][:200]})",
                           self.need, options)

    # ---- the end ------------------------------------------------------------------------------
    def finish(self) -> ev.Finished:
        """The best checkpoint's weights when asked for; the final adapter in output_dir/adapter/."""
        st = self.state
        if self.cfg.load_best_model_at_end and st.best_checkpoint and Path(st.best_checkpoint).exists():
            if step_of(Path(st.best_checkpoint)) != st.global_step:
                self.backend.load_checkpoint(Path(st.best_checkpoint))
            self.emit(ev.Log("info", f"loaded the best checkpoint {Path(st.best_checkpoint).name} "
                                     f"({self.evals.metric_name}={st.best_metric:.4f})"))
        adapter_dir = self.out / "adapter"
        if self.writer:   # the adapter in two layouts: half a checkpoint, about
            with writing(adapter_dir, checkpoint_bytes(self.out, self.params.trainable) // 2):
                write_output_dir(adapter_dir, self.backend.save_adapter, ADAPTER, self.job)
        finished = ev.Finished(adapter_path=str(adapter_dir), output_dir=str(self.out), steps=st.global_step,
                               final_loss=st.last_loss, best_checkpoint=st.best_checkpoint,
                               best_metric=st.best_metric, peak_memory_bytes=self.backend.memory().peak_bytes,
                               stopped_early=self.stopped_early)
        self.emit(finished)
        return finished


def train(cfg: TrainConfig, backend: Backend, emit: Callable[[object], None],
          should_stop: Callable[[], bool] = lambda: False, base_dir: Optional[Path] = None,
          rank: int = 0, world_size: int = 1, validated: bool = False,
          all_sum: Callable[[float], float] = float) -> ev.Finished:
    """Train `cfg` on `backend` as rank `rank` of `world_size`, emitting events; see the module docstring.
    `validated`: the config is a submitted job's, which the loader validated, so it is not checked again.
    `all_sum`: sums a float across the ranks (the distributed engine's; distributed/rank.py)."""
    return Trainer(cfg, backend, emit, should_stop, base_dir, Shard(rank, world_size), validated, all_sum).run()
