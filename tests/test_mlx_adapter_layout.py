"""adapter_layout: mlx-lm <-> PEFT names, shapes and configs (pure numpy, no mlx needed)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tunerd.backends import adapter_layout as L


def _mlx_weights(dora=False):
    rng = np.random.default_rng(0)
    w = {}
    for i in (2, 3):
        for mod, out in (("self_attn.q_proj", 64), ("self_attn.v_proj", 32)):
            p = f"model.layers.{i}.{mod}"
            w[f"{p}.lora_a"] = rng.standard_normal((64, 8)).astype(np.float32)   # (in, r)
            w[f"{p}.lora_b"] = rng.standard_normal((8, out)).astype(np.float32)  # (r, out)
            if dora:
                w[f"{p}.m"] = rng.random(out).astype(np.float32)
    return w


def test_names_and_shapes_round_trip():
    w = _mlx_weights(dora=True)
    peft = L.mlx_to_peft(w)
    a = peft["base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight"]
    b = peft["base_model.model.model.layers.2.self_attn.v_proj.lora_B.weight"]
    assert a.shape == (8, 64) and b.shape == (32, 8)
    assert "base_model.model.model.layers.3.self_attn.v_proj.lora_magnitude_vector" in peft
    back = L.peft_to_mlx(peft)
    assert back.keys() == w.keys() and all(np.array_equal(back[k], w[k]) for k in w)
    # adapter-named keys as in a live PeftModel state dict
    named = {k.replace("lora_A.weight", "lora_A.default.weight"): v for k, v in peft.items()}
    assert L.peft_to_mlx(named).keys() == w.keys()
    with pytest.raises(L.AdapterLayoutError, match="not a LoRA"):
        L.mlx_to_peft({"model.embed_tokens.weight": np.zeros(2)})


def test_scale_follows_alpha_and_rslora():
    assert L.AdapterSpec(r=8, lora_alpha=16).scale == 2.0
    assert L.AdapterSpec(r=16, lora_alpha=16, use_rslora=True).scale == pytest.approx(4.0)
    assert L.AdapterSpec.alpha_from_scale(2.0, 8) == 16


def test_write_both_layouts_and_read_either(tmp_path):
    spec = L.AdapterSpec(kind="dora", r=8, lora_alpha=32, base_model="tiny")
    L.write_adapter(tmp_path / "a", _mlx_weights(dora=True), spec, n_model_layers=4)
    peft_cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert peft_cfg["peft_type"] == "LORA" and peft_cfg["use_dora"] and peft_cfg["r"] == 8
    assert peft_cfg["lora_alpha"] == 32 and peft_cfg["target_modules"] == ["q_proj", "v_proj"]
    assert peft_cfg["layers_to_transform"] == [2, 3]
    mlx_cfg = json.loads((tmp_path / "a" / "mlx" / "adapter_config.json").read_text())
    assert mlx_cfg["fine_tune_type"] == "dora" and mlx_cfg["num_layers"] == 2
    assert mlx_cfg["lora_parameters"]["scale"] == 4.0
    assert mlx_cfg["lora_parameters"]["keys"] == ["self_attn.q_proj", "self_attn.v_proj"]
    for prefer in ("mlx", "peft"):
        got, w = L.read_adapter(tmp_path / "a", prefer=prefer)
        assert got.kind == "dora" and got.r == 8 and math.isclose(got.lora_alpha, 32)
        assert got.keys == ["self_attn.q_proj", "self_attn.v_proj"] and set(w) == set(_mlx_weights(True))
    assert L.find_layout(tmp_path / "a") == ("mlx", tmp_path / "a" / "mlx")
    (tmp_path / "a" / "mlx" / "adapters.safetensors").unlink()
    assert L.find_layout(tmp_path / "a")[0] == "peft"
    with pytest.raises(FileNotFoundError):
        L.find_layout(tmp_path / "missing")
