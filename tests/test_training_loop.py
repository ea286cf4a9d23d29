"""The backend-agnostic training loop, driven by a fake numpy backend (no mlx, no torch)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tunerd.backends.base import Backend, MemoryStats, ModelInfo, ParamStats
from tunerd.config.schema import DataConfig, TrainConfig
from tunerd.training import events as ev
from tunerd.training.loop import NonFiniteLoss, TrainingCancelled, train
from tunerd.training.schedulers import NAMES, Scheduler


class FakeBackend(Backend):
    """A quadratic 'model' w[token] -> target/100, SGD with momentum; fully deterministic."""
    name = "fake"

    def __init__(self, tokenizer, eval_losses=None, nan_at_step=None):
        self._tok = tokenizer
        self.eval_losses = list(eval_losses or [])
        self.nan_at_step = nan_at_step
        self.calls = []          # ("fb", n_targets) / ("step", grad_scale)
        self.steps = 0

    @property
    def tokenizer(self):
        return self._tok

    def load(self, cfg):
        self.w = np.zeros(len(self._tok), dtype=np.float64)
        return ModelInfo(model=cfg.model, backend="fake", device="cpu", dtype="float64", quantization="none",
                         total_params=self.w.size, vocab_size=self.w.size, eos_token_ids=[self._tok.eos_token_id])

    def add_adapter(self, cfg):
        self.m = np.zeros_like(self.w)
        self.g = np.zeros_like(self.w)
        return ParamStats(total=self.w.size, trainable=self.w.size)

    def forward_backward(self, batch):
        mask = batch.loss_mask.astype(np.float64)
        err = (self.w[batch.inputs] - batch.targets / 100.0) * mask
        np.add.at(self.g, batch.inputs, 2 * err)
        n = int(mask.sum())
        self.calls.append(("fb", n))
        loss = float((err ** 2).sum())
        if self.nan_at_step is not None and self.steps + 1 == self.nan_at_step:
            loss = float("nan")
        return loss, n

    def optimizer_step(self, lr, grad_scale, max_grad_norm):
        self.calls.append(("step", grad_scale))
        g = self.g * grad_scale
        norm = float(np.linalg.norm(g))
        if max_grad_norm > 0:
            g = g * min(1.0, max_grad_norm / (norm + 1e-6))
        self.m = 0.9 * self.m + g
        self.w -= lr * self.m
        self.g[:] = 0
        self.steps += 1
        return norm

    def peak_flops(self):
        return 1e12

    def eval_loss(self, batch):
        if self.eval_losses:
            return self.eval_losses.pop(0) * 10, 10
        mask = batch.loss_mask.astype(np.float64)
        return float((((self.w[batch.inputs] - batch.targets / 100.0) * mask) ** 2).sum()), int(mask.sum())

    def save_checkpoint(self, path):
        np.savez(Path(path) / "fake.npz", w=self.w, m=self.m)

    def load_checkpoint(self, path):
        d = np.load(Path(path) / "fake.npz")
        self.w, self.m = d["w"].copy(), d["m"].copy()

    def save_adapter(self, path):
        np.save(Path(path) / "w.npy", self.w)

    def load_adapter(self, path):
        self.w = np.load(Path(path) / "w.npy")

    def generate(self, prompt_ids, sampling, should_stop=lambda: False):
        return iter(())

    def memory(self):
        return MemoryStats(1, 2)


def _cfg(bundle, tmp_path, **kw):
    base = dict(model="fake", output_dir=str(tmp_path / "run"), learning_rate=0.5, max_steps=8,
                per_device_train_batch_size=4, logging_steps=1, eval_strategy="no", save_strategy="no",
                lr_scheduler_type="constant", data=DataConfig(train=bundle["train"], validation=bundle["valid"]))
    base.update(kw)
    return TrainConfig(**base)


def _run(cfg, backend, **kw):
    seen = []
    fin = train(cfg, backend, seen.append, **kw)
    return fin, seen


def _of(seen, cls):
    return [e for e in seen if isinstance(e, cls)]


@pytest.mark.parametrize("name", NAMES[:-1])
def test_schedulers_match_transformers(name):
    torch = pytest.importorskip("torch")
    from transformers import get_scheduler

    kwargs = {"cosine_with_min_lr": {"min_lr_rate": 0.1}, "warmup_stable_decay": {"num_decay_steps": 6},
              "cosine_with_restarts": {"num_cycles": 2}}.get(name, {})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    hf = get_scheduler(name, opt, num_warmup_steps=3, num_training_steps=20, scheduler_specific_kwargs=kwargs)
    ours = Scheduler(name, 0.1, 20, 3, kwargs)
    for step in range(22):
        assert ours.lr_at(step) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-9), (name, step)
        opt.step()
        hf.step()


def test_reduce_lr_on_plateau_follows_eval_loss():
    s = Scheduler("reduce_lr_on_plateau", 1.0, 100, 2, {"patience": 1, "factor": 0.5})
    assert [s.lr_at(0), s.lr_at(1), s.lr_at(2)] == [0.0, 0.5, 1.0]
    for loss in (3.0, 2.0, 2.5, 2.6):   # two evals without improvement > patience 1
        s.on_eval(loss)
    assert s.lr_at(10) == 0.5
    s2 = Scheduler("reduce_lr_on_plateau", 1.0, 100)
    s2.load_state_dict(s.state_dict())
    assert s2.lr_at(10) == 0.5


def test_accumulation_normalises_by_all_supervised_tokens(demo_bundle, tiny_tokenizer, tmp_path):
    fake = FakeBackend(tiny_tokenizer)
    fin, seen = _run(_cfg(demo_bundle, tmp_path, gradient_accumulation_steps=3, per_device_train_batch_size=2,
                          max_steps=4), fake)
    groups, cur = [], []
    for kind, val in fake.calls:
        if kind == "fb":
            cur.append(val)
        else:
            groups.append((cur, val))
            cur = []
    assert len(groups) == 4
    for ns, scale in groups:
        assert len(ns) == 3 and scale == pytest.approx(1.0 / sum(ns))
    assert fin.steps == 4 and Path(fin.adapter_path, "w.npy").exists()
    out = Path(fin.output_dir)
    assert json.loads((out / "config.json").read_text())["gradient_accumulation_steps"] == 3
    assert (out / "config.yaml").exists()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["type"] == "train"] == [1, 2, 3, 4]
    started = _of(seen, ev.Started)[0]
    assert started.total_steps == 4 and started.trainable_percent == 100.0
    step = _of(seen, ev.Step)[0]
    assert step.tokens_per_second > 0 and step.trained_tokens > 0


def test_epochs_define_total_steps(demo_bundle, tiny_tokenizer, tmp_path):
    # 32 rows - 0 (explicit validation) = 32; batch 4 -> 8 micro-batches; accumulation 3 -> 3 steps/epoch
    fin, seen = _run(_cfg(demo_bundle, tmp_path, max_steps=-1, num_epochs=2, gradient_accumulation_steps=3),
                     FakeBackend(tiny_tokenizer))
    assert fin.steps == 6
    assert _of(seen, ev.Step)[-1].epoch == pytest.approx(2.0)


def test_nan_loss_fails_clearly(demo_bundle, tiny_tokenizer, tmp_path):
    with pytest.raises(NonFiniteLoss, match="step 3: training loss is nan"):
        _run(_cfg(demo_bundle, tmp_path), FakeBackend(tiny_tokenizer, nan_at_step=3))


def test_early_stopping_and_best_checkpoint(demo_bundle, tiny_tokenizer, tmp_path):
    fake = FakeBackend(tiny_tokenizer, eval_losses=[3.0, 2.0, 2.5, 2.4, 2.6, 1.0])
    cfg = _cfg(demo_bundle, tmp_path, max_steps=20, eval_strategy="steps", eval_steps=1, save_strategy="steps",
               save_steps=1, save_total_limit=2, early_stopping_patience=3, load_best_model_at_end=True)
    fin, seen = _run(cfg, fake)
    assert fin.stopped_early and fin.steps == 5
    assert fin.best_metric == pytest.approx(2.0) and fin.best_checkpoint.endswith("checkpoint-2")
    kept = sorted(p.name for p in Path(fin.output_dir).glob("checkpoint-*"))
    assert kept == ["checkpoint-2", "checkpoint-5"]          # limit 2: the best and the newest
    best_w = np.load(Path(fin.best_checkpoint) / "fake.npz")["w"]
    assert np.array_equal(np.load(Path(fin.adapter_path) / "w.npy"), best_w)
    evals = _of(seen, ev.Eval)
    assert [round(e.eval_loss, 3) for e in evals] == [3.0, 2.0, 2.5, 2.4, 2.6]
    assert evals[0].perplexity == pytest.approx(math.exp(3.0))


def test_cancel_checkpoints_and_resume_is_exact(demo_bundle, tiny_tokenizer, tmp_path):
    kw = dict(max_steps=10, gradient_accumulation_steps=2, per_device_train_batch_size=3,
              lr_scheduler_type="cosine", warmup_steps=2, learning_rate=0.3)
    _, full = _run(_cfg(demo_bundle, tmp_path / "a", **kw), FakeBackend(tiny_tokenizer))
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 7   # checked before each step: stops after 7 steps (mid-epoch 2)

    with pytest.raises(TrainingCancelled) as info:
        _run(_cfg(demo_bundle, tmp_path / "b", **kw), FakeBackend(tiny_tokenizer), should_stop=stop)
    assert info.value.step == 7 and Path(info.value.checkpoint, "trainer_state.json").exists()
    fin, resumed = _run(_cfg(demo_bundle, tmp_path / "b", resume_from_checkpoint="latest", **kw),
                        FakeBackend(tiny_tokenizer))
    assert _of(resumed, ev.Started)[0].resumed_from_step == 7
    a = [(e.step, e.loss, e.learning_rate) for e in _of(full, ev.Step)][7:]
    b = [(e.step, e.loss, e.learning_rate) for e in _of(resumed, ev.Step)]
    assert [x[0] for x in b] == [8, 9, 10]
    np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-12)
    lines = [json.loads(x) for x in (Path(fin.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 11))


def test_missing_output_dir_and_bad_cadence_are_errors(demo_bundle, tiny_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="output_dir"):
        _run(_cfg(demo_bundle, tmp_path, output_dir=""), FakeBackend(tiny_tokenizer))
    with pytest.raises(ValueError, match="save_steps .* multiple of eval_steps"):
        _run(_cfg(demo_bundle, tmp_path, eval_strategy="steps", save_strategy="steps", eval_steps=3, save_steps=4,
                  load_best_model_at_end=True), FakeBackend(tiny_tokenizer))


def test_the_loop_imports_neither_mlx_nor_torch():
    import subprocess
    import sys

    code = ("import sys, tunerd.training.loop, tunerd.training.schedulers, tunerd.backends.adapter_layout; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlx', 'mlx_lm', 'torch'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_tensorboard_event_file_is_valid_tfrecord_of_event_protos(demo_bundle, tiny_tokenizer, tmp_path):
    import struct

    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    from tunerd.training.tensorboard import crc32c, masked_crc

    assert crc32c(b"123456789") == 0xE3069283          # the CRC-32C check value
    fin, _ = _run(_cfg(demo_bundle, tmp_path, max_steps=3), FakeBackend(tiny_tokenizer))
    files = list(Path(fin.output_dir, "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    # the Event / Summary protos of tensorflow, declared here to parse what we wrote
    fdp = descriptor_pb2.FileDescriptorProto(name="tb_event_test.proto", package="tbtest", syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto
    value = fdp.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL)
    summary = fdp.message_type.add(name="Summary")
    summary.field.add(name="value", number=1, type=F.TYPE_MESSAGE, type_name=".tbtest.Value", label=F.LABEL_REPEATED)
    event = fdp.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    event.field.add(name="summary", number=5, type=F.TYPE_MESSAGE, type_name=".tbtest.Summary", label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    Event = message_factory.GetMessageClass(pool.FindMessageTypeByName("tbtest.Event"))
    raw, events = files[0].read_bytes(), []
    while raw:
        (n,) = struct.unpack("<Q", raw[:8])
        assert struct.unpack("<I", raw[8:12])[0] == masked_crc(raw[:8])
        data = raw[12:12 + n]
        assert struct.unpack("<I", raw[12 + n:16 + n])[0] == masked_crc(data)
        events.append(Event.FromString(data))
        raw = raw[16 + n:]
    assert events[0].file_version == "brain.Event:2"
    losses = {e.step: v.simple_value for e in events[1:] for v in e.summary.value if v.tag == "train/loss"}
    assert sorted(losses) == [1, 2, 3] and all(np.isfinite(list(losses.values())))


def test_debug_mode_is_one_epoch_of_batch_two(demo_bundle, tiny_tokenizer, tmp_path):
    fin, seen = _run(_cfg(demo_bundle, tmp_path, debug=True, max_steps=500, per_device_train_batch_size=16),
                     FakeBackend(tiny_tokenizer))
    started = _of(seen, ev.Started)[0]
    assert started.train_rows == 32 and started.eval_rows == 8      # under the 50 / 10 caps
    assert fin.steps == 16                                           # 32 rows / batch 2, one epoch
