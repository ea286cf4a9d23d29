"""task dpo / orpo equal TRL 1.16's trainers on one fixed batch, and MLX equals torch.

One adapter with non-zero weights (a few SFT steps on MLX from the shared initial A) is copied into
the torch backend and into TRL's own PEFT model (a fresh adapter of the same config, so TRL's
reference is the base with the adapter disabled, as ours is). TRL tokenizes the preference rows and
collates one batch; our backends get exactly those tokens and completion masks as a Batch. Then:
- DPO (sigmoid, ipo): our loss and TRL's names (rewards/chosen, rewards/rejected,
  rewards/accuracies, rewards/margins, logps/chosen, logps/rejected) equal DPOTrainer.compute_loss's
  within 1e-4 on torch; the LoRA gradients equal TRL's backward;
- ORPO: the same metrics plus log_odds_ratio and log_odds_chosen equal ORPOTrainer's
  get_batch_loss_metrics, and so does the odds-ratio part of the loss (loss - nll_loss). The NLL
  part differs by design: TRL's runs over the chosen prompt and answer, ours (as for SFT, and as
  the ORPO paper's L_SFT) over the answer only; it is checked against a plain cross-entropy;
- MLX equals torch for every one of these within FLOAT_TOL.
"""
from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("trl")

from backend_utils import copy_into_trainable_adapter, demo_rows  # noqa: E402
from tunerd.backends.base import ModelSpec  # noqa: E402
from tunerd.config.schema import DataConfig, TrainConfig  # noqa: E402
from tunerd.data.batch import collate, collate_sequences  # noqa: E402
from tunerd.data.prepare import StepBatches  # noqa: E402
from tunerd.tasks import get_task  # noqa: E402

TRL_TOL = 1e-4     # ours (torch) vs TRL, absolute, float32 on both sides
FLOAT_TOL = 1e-4   # MLX vs torch: the same float32 math in another summation order
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]
PAIRS = 4
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected")


def _cfg(bundle, **task) -> TrainConfig:
    return TrainConfig(model=bundle["model"], lora_r=8, lora_alpha=16, lora_dropout=0.0, lora_target_modules=TARGETS,
                       learning_rate=1e-2, dtype="float32", seed=3,
                       data=DataConfig(train=bundle["preference_train"]), **task)


@pytest.fixture(scope="module")
def setup(demo_bundle, tmp_path_factory):
    """(adapter dir, mlx backend, torch backend), both with the same trained, non-zero adapter."""
    from tunerd.backends.mlx import MLXBackend
    from tunerd.backends.torch import TorchBackend

    cfg = _cfg(demo_bundle)
    mlx_be, torch_be = MLXBackend(), TorchBackend()
    for be in (mlx_be, torch_be):
        be.load(ModelSpec.from_config(cfg))
        be.add_adapter(cfg)
    train, _ = demo_rows(demo_bundle, torch_be.tokenizer)
    for i in range(4):   # B != 0: the policy differs from the reference (the base)
        b = collate([tuple(r) for r in train[4 * i:4 * i + 4]], torch_be.tokenizer.pad_token_id)
        _, n = mlx_be.forward_backward(b)
        mlx_be.optimizer_step(cfg.learning_rate, 1.0 / n, 1.0)
    path = tmp_path_factory.mktemp("adapter") / "a"
    mlx_be.save_adapter(path)
    copy_into_trainable_adapter(torch_be, path)
    return path, mlx_be, torch_be


def _rows(bundle):
    return [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in bundle["preference_rows"][:PAIRS]]


def _trl_peft_model(bundle, adapter):
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(bundle["model"], dtype=torch.float32)
    return model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")


def _load_into(trl_model, adapter) -> None:
    class Holder:   # copy_into_trainable_adapter reads `.model`
        model = trl_model
    copy_into_trainable_adapter(Holder, adapter)


def _batch(ids_rows, mask_rows, pad_id):
    return collate_sequences([[(list(i), [float(x) for x in m])] for i, m in zip(ids_rows, mask_rows)], pad_id)


def _ours(be, cfg, batch) -> tuple[float, dict]:
    """Our task's loss and metrics on one batch as the Trainer computes them (one micro-batch step)."""
    task = get_task(cfg)
    step = StepBatches(batches=[batch], mine=[batch], ends_epoch=False)
    be.optimizer.zero_grad() if be.name == "torch" else None
    s, metrics = task.forward_backward(be, batch, step)
    norm = task.normaliser(step)
    return s / norm, {k: v / norm for k, v in metrics.items()}


def _lora_grads(model, scale: float = 1.0) -> dict:
    """LoRA gradients by their layer path (the part from `layers.`), float64."""
    return {n[n.index("layers."):].replace(".default", ""): p.grad.double().numpy() * scale
            for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_equals_trl_dpo_trainer(demo_bundle, setup, tmp_path, loss_type):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    adapter, mlx_be, torch_be = setup
    model, peft_config = _trl_peft_model(demo_bundle, adapter)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.1, loss_type=[loss_type], report_to=[],
                     per_device_train_batch_size=PAIRS, use_cpu=True, bf16=False, seed=0, activation_checkpointing=False)
    tr = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(_rows(demo_bundle)),
                    processing_class=torch_be.tokenizer, peft_config=peft_config)
    _load_into(tr.model, adapter)
    inputs = next(iter(tr.get_train_dataloader()))
    tr.model.train()
    trl_loss = tr.compute_loss(tr.model, inputs)
    trl_loss.backward()
    trl_loss = float(trl_loss.detach())
    trl_metrics = {k: v[-1] for k, v in tr._metrics["train"].items()}
    lengths = inputs["attention_mask"].sum(1).tolist()
    batch = _batch([r[:n] for r, n in zip(inputs["input_ids"].tolist(), lengths)],
                   [r[:n] for r, n in zip(inputs["completion_mask"].tolist(), lengths)], torch_be.tokenizer.pad_token_id)

    cfg = _cfg(demo_bundle, task="dpo", beta=0.1, loss_type=loss_type)
    loss_t, m_t = _ours(torch_be, cfg, batch)
    assert abs(loss_t - trl_loss) < TRL_TOL, (loss_t, trl_loss)
    for k in METRICS:
        assert abs(m_t[k] - trl_metrics[k]) < TRL_TOL * max(1.0, abs(trl_metrics[k])), (k, m_t[k], trl_metrics[k])
    assert abs(m_t["rewards/margins"]) > 1e-3   # the adapter moved the policy away from the reference
    ours_g, trl_g = _lora_grads(torch_be.model, 1.0 / PAIRS), _lora_grads(tr.model)
    assert ours_g.keys() == trl_g.keys() and ours_g
    worst = max(np.abs(ours_g[k] - trl_g[k]).max() / max(np.abs(trl_g[k]).max(), 1e-12) for k in ours_g)
    assert worst < 1e-3, f"relative LoRA gradient difference {worst:.1e}"

    loss_m, m_m = _ours(mlx_be, cfg, batch)
    assert abs(loss_m - loss_t) < FLOAT_TOL, (loss_m, loss_t)
    for k in METRICS:
        assert abs(m_m[k] - m_t[k]) < FLOAT_TOL * max(1.0, abs(m_t[k])), (k, m_m[k], m_t[k])
    print(f"dpo {loss_type}: |ours-TRL| loss {abs(loss_t - trl_loss):.1e}, max metric "
          f"{max(abs(m_t[k] - trl_metrics[k]) for k in METRICS):.1e}, grads rel {worst:.1e}; |mlx-torch| loss "
          f"{abs(loss_m - loss_t):.1e}, max metric {max(abs(m_m[k] - m_t[k]) for k in METRICS):.1e}")


def test_orpo_equals_trl_orpo_trainer(demo_bundle, setup, tmp_path):
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    adapter, mlx_be, torch_be = setup
    model, peft_config = _trl_peft_model(demo_bundle, adapter)
    args = ORPOConfig(output_dir=str(tmp_path / "trl"), beta=0.1, report_to=[], per_device_train_batch_size=PAIRS,
                      use_cpu=True, bf16=False, seed=0, max_length=128, max_completion_length=64,
                      activation_checkpointing=False)
    tr = ORPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(_rows(demo_bundle)),
                     processing_class=torch_be.tokenizer, peft_config=peft_config)
    _load_into(tr.model, adapter)
    inputs = next(iter(tr.get_train_dataloader()))
    tr.model.train()
    with torch.no_grad():
        trl_loss, trl_metrics = tr.get_batch_loss_metrics(tr.model, inputs)
    ids, masks = [], []
    for side in ("chosen", "rejected"):
        for row, att, lab in zip(inputs[f"{side}_input_ids"].tolist(), inputs[f"{side}_attention_mask"].tolist(),
                                 inputs[f"{side}_labels"].tolist()):
            n = int(sum(att))
            ids.append(row[:n])
            masks.append([0.0 if t == -100 else 1.0 for t in lab[:n]])
    batch = _batch(ids, masks, torch_be.tokenizer.pad_token_id)

    cfg = _cfg(demo_bundle, task="orpo", beta=0.1)
    loss_t, m_t = _ours(torch_be, cfg, batch)
    names = METRICS + ("log_odds_ratio", "log_odds_chosen")
    for k in names:
        assert abs(m_t[k] - trl_metrics[k]) < TRL_TOL * max(1.0, abs(trl_metrics[k])), (k, m_t[k], trl_metrics[k])
    ratio_t, ratio_trl = loss_t - m_t["nll_loss"], float(trl_loss) - trl_metrics["nll_loss"]
    assert abs(ratio_t - ratio_trl) < TRL_TOL, (ratio_t, ratio_trl)
    # our NLL: the mean cross-entropy of the chosen answers' tokens (TRL's adds the prompt's)
    with torch.no_grad():
        half = batch.inputs.shape[0] // 2
        logits = tr.model(input_ids=torch.tensor(batch.inputs[:half], dtype=torch.long)).logits.float()
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), torch.tensor(batch.targets[:half],
                                               dtype=torch.long), reduction="none").numpy()
    mask = batch.loss_mask[:half]
    assert abs(m_t["nll_loss"] - float((ce * mask).sum() / mask.sum())) < TRL_TOL

    loss_m, m_m = _ours(mlx_be, cfg, batch)
    assert abs(loss_m - loss_t) < FLOAT_TOL, (loss_m, loss_t)
    for k in names + ("nll_loss",):
        assert abs(m_m[k] - m_t[k]) < FLOAT_TOL * max(1.0, abs(m_t[k])), (k, m_m[k], m_t[k])
    print(f"orpo: |ours-TRL| odds-ratio loss {abs(ratio_t - ratio_trl):.1e}, max metric "
          f"{max(abs(m_t[k] - trl_metrics[k]) for k in names):.1e}; |mlx-torch| loss {abs(loss_m - loss_t):.1e}")
