"""'Is this folder a full fine-tune?' is decided in one place (backends/own_base.full_finetune_weights):
the model registry (changes_base) and both backends' load_adapter ask it."""
from __future__ import annotations

import json

import numpy as np

from tunerd.backends.adapter_layout import AdapterSpec, write_adapter
from tunerd.backends.own_base import changes_base, full_finetune_weights


def test_full_finetunes_in_both_layouts_and_adapters(tmp_path):
    w = {"model.layers.0.self_attn.q_proj.lora_a": np.ones((8, 2), np.float32),
         "model.layers.0.self_attn.q_proj.lora_b": np.ones((2, 8), np.float32)}
    lora = write_adapter(tmp_path / "lora", w, AdapterSpec(r=2, target_modules=["q_proj"]))
    assert full_finetune_weights(lora) == [] and not changes_base(lora)

    standalone = tmp_path / "standalone"        # save_pretrained's layout (a full run on either backend)
    standalone.mkdir()
    (standalone / "config.json").write_text("{}")
    for name in ("model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors"):
        (standalone / name).write_bytes(b"")
    assert [p.name for p in full_finetune_weights(standalone)] == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert changes_base(standalone)
    (standalone / "config.json").unlink()       # weights without config.json: not a model
    assert full_finetune_weights(standalone) == []

    for where in ("mlx_top", "mlx_sub/mlx"):    # mlx-lm's layout with fine_tune_type full
        d = tmp_path / where
        d.mkdir(parents=True)
        (d / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "full"}))
        (d / "adapters.safetensors").write_bytes(b"")
        top = tmp_path / where.split("/")[0]
        assert full_finetune_weights(top) == [d / "adapters.safetensors"] and changes_base(top)


def test_a_config_asks_for_a_full_fine_tune():
    from tunerd.config.schema import TrainConfig

    assert TrainConfig(peft_adapter="full").full_finetune
    assert not TrainConfig().full_finetune and not TrainConfig(peft_adapter="dora").full_finetune
