"""Config resolution: _base_ inheritance, overrides, unknown keys with suggestions, validation."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tunerd.config.loader import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("lora_r: 32\nlearning_rate: 0.0002\ndata:\n  format: auto\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nmodel: m\nlora_r: 16\ndata:\n  train: t.jsonl\n")
    cfg = load_config(tmp_path / "child.yaml", ["learning_rate=1e-3", "data.validation=v.jsonl",
                                                "lora_target_modules=[q_proj,k_proj]"])
    assert (cfg.lora_r, cfg.learning_rate) == (16, 1e-3)
    assert (cfg.data.train, cfg.data.validation) == ("t.jsonl", "v.jsonl")
    assert cfg.lora_target_modules == ["q_proj", "k_proj"]


def test_unknown_keys_name_the_closest_valid_key():
    with pytest.raises(ConfigError) as e:
        load_config(doc={"model": "m", "learning_rat": 1e-4, "data": {"train": "x", "fromat": "text"}})
    assert "learning_rat: unknown key; did you mean learning_rate?" in str(e.value)
    assert "data.fromat: unknown key; did you mean data.format?" in str(e.value)


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(doc={"model": "m", "lora_r": 0, "lr_scheduler_type": "cosine-ish", "lora_dropout": 2,
                         "data": {"train": "x", "text_column": "t", "prompt_column": "p"}})
    msg = str(e.value)
    for part in ("lora_r: must be > 0", "lr_scheduler_type: 'cosine-ish' is not one of",
                 "lora_dropout", "declare one or the other"):
        assert part in msg


def test_impossible_hyperparameters():
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(doc={"model": "m", "learning_rate": 50.0, "data": "x"})
    with pytest.raises(ConfigError, match="expected a number"):
        load_config(doc={"model": "m", "learning_rate": "fast", "data": "x"})


def test_debug_mode_is_a_smoke_run():
    cfg = load_config(doc={"model": "m", "debug": True, "num_epochs": 5, "data": "x"})
    assert (cfg.num_epochs, cfg.per_device_train_batch_size, cfg.data.max_rows) == (1.0, 2, 50)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_resolves(path):
    # base configs are partial: they resolve once a model and data are given
    extra = {"model": "m", "data": {"train": "t.jsonl"}} if path.parent.name == "base" else None
    cfg = load_config(path, doc=extra)
    assert cfg.model and cfg.data.train


def test_demo_example_matches_the_builtin_demo():
    import yaml

    from tunerd.config.loader import read_yaml
    from tunerd.demo.tiny import demo_config_yaml
    builtin = yaml.safe_load(demo_config_yaml("M", "T", "V"))
    example = read_yaml(ROOT / "configs" / "examples" / "demo.yaml")
    for key, value in builtin.items():
        if key not in ("model", "data"):
            assert example[key] == value, key


def test_tilde_paths_are_expanded_hub_ids_and_relative_paths_kept():
    home = os.path.expanduser("~")
    cfg = load_config(doc={"model": "~/models/m", "output_dir": "~/runs/x", "resume_from_checkpoint": "latest",
                           "data": {"train": ["~/d/a.jsonl", "rel/b.jsonl"], "validation": [{"path": "~/d/v.jsonl", "split": "x"}],
                                    "test": "org/dataset"}})
    assert cfg.model == f"{home}/models/m" and cfg.output_dir == f"{home}/runs/x"
    assert cfg.resume_from_checkpoint == "latest"
    assert cfg.data.train == [f"{home}/d/a.jsonl", "rel/b.jsonl"]
    assert cfg.data.validation == [{"path": f"{home}/d/v.jsonl", "split": "x"}] and cfg.data.test == "org/dataset"
    assert load_config(doc={"model": "Qwen/Qwen2.5-0.5B", "data": {"train": "x.jsonl"}}).model == "Qwen/Qwen2.5-0.5B"


def test_data_system_prompt_is_a_config_key():
    cfg = load_config(doc={"model": "m", "data": {"train": "x.jsonl"}}, overrides=["data.system_prompt=Be brief."])
    assert cfg.data.system_prompt == "Be brief."
