"""An adapter's base model is read in one place (backends/adapter_base.py), from what saving writes."""
from __future__ import annotations

import json

import numpy as np

from tunerd.backends.adapter_layout import AdapterSpec, write_adapter
from tunerd.backends.adapter_base import adapter_base


def test_the_base_an_adapter_folder_names(tmp_path):
    w = {"model.layers.0.self_attn.q_proj.lora_a": np.ones((8, 2), np.float32),
         "model.layers.0.self_attn.q_proj.lora_b": np.ones((2, 8), np.float32)}
    adapter = write_adapter(tmp_path / "a", w, AdapterSpec(r=2, target_modules=["q_proj"], base_model="org/base"))
    assert adapter_base(adapter) == adapter_base(str(adapter)) == "org/base"
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    assert adapter_base(adapter) == ""                 # names none
    (adapter / "adapter_config.json").write_text("{damaged")
    assert adapter_base(adapter) == ""
    assert adapter_base(tmp_path / "missing") == "" and adapter_base("") == ""
