"""A model's config.json is read in one place (tunerd/model_config.py)."""
from __future__ import annotations

import json

from tunerd.model_config import config_file, context_positions, read_model_config


def test_config_json_of_a_local_folder_relative_path_and_cache(tmp_path, monkeypatch):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "text_config": {"n_positions": 512}}))
    assert read_model_config(str(model)) == {"model_type": "llama", "text_config": {"n_positions": 512}}
    assert context_positions(str(model)) == (512, f"n_positions in {model / 'config.json'}")
    assert read_model_config("m", base_dir=tmp_path, cache=False)["model_type"] == "llama"  # relative to base_dir
    monkeypatch.chdir(tmp_path.parent)
    assert read_model_config("m", cache=False) is None          # relative to the cwd without one
    (model / "config.json").write_text("not json")
    assert read_model_config(str(model)) is None and context_positions(str(model)) is None
    assert config_file("", cache=True) is None
    assert read_model_config("no-such-org/no-such-model") is None   # not cached: None, never a download
