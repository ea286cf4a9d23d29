"""`recommend` reads the data: rows through the data pipeline for every format, max_seq_length and
packing from the token lengths, batch and checkpointing from the memory estimate."""
from __future__ import annotations

import json

import pytest

from tunerd.recommend import recommend

ROWS = [{"instruction": f"Summarise note {i}.", "input": "line one\nline two", "output": f"Note {i} is short."}
        for i in range(12)]


@pytest.fixture
def tok_for(tiny_tokenizer):
    return lambda model: tiny_tokenizer


def _write(tmp_path, kind: str):
    if kind == "json_array":
        p = tmp_path / "a.json"
        p.write_text(json.dumps(ROWS, indent=2))  # 12 rows over ~60 lines
    elif kind == "jsonl":
        p = tmp_path / "a.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif kind == "csv":
        import csv
        p = tmp_path / "a.csv"
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(ROWS[0]))
            w.writeheader()
            w.writerows(ROWS)  # quoted multi-line fields: more lines than rows
    elif kind == "parquet":
        import pandas as pd
        p = tmp_path / "a.parquet"
        pd.DataFrame(ROWS).to_parquet(p)
    else:
        p = tmp_path / "dir"
        p.mkdir()
        (p / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
        (p / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:3]))
    return str(p)


@pytest.mark.parametrize("kind", ["json_array", "jsonl", "csv", "parquet", "directory"])
def test_row_count_is_rows_not_lines(tmp_path, tiny_model_dir, tok_for, kind):
    r = recommend(model=tiny_model_dir, data_path=_write(tmp_path, kind), tokenizer_for=tok_for)
    assert r.train_rows == 12
    assert any("12 training rows" in x for x in r.reasons)
    assert r.config["learning_rate"] == 1e-4 and r.config["num_epochs"] == 10.0


def test_config_counts_rows_after_its_validation_split(tmp_path, tiny_model_dir, tok_for):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"model": tiny_model_dir, "data": {"train": _write(tmp_path, "json_array"),
                                                                 "test_size": 0.25}}))
    assert recommend(config_path=str(cfg), tokenizer_for=tok_for).train_rows == 9


def test_max_seq_length_follows_the_token_lengths(tmp_path, tiny_model_dir, tiny_tokenizer, tok_for):
    short = recommend(model=tiny_model_dir, data_path=_write(tmp_path, "jsonl"), tokenizer_for=tok_for)
    assert 0 < short.tokens_p50 <= short.tokens_max <= 64
    assert short.config["max_seq_length"] == 64
    long_rows = [dict(r, output=" ".join(["word"] * 40)) for r in ROWS]
    p = tmp_path / "long.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in long_rows))
    long = recommend(model=tiny_model_dir, data_path=str(p), tokenizer_for=tok_for)
    assert 100 < long.tokens_max < 448
    assert long.config["max_seq_length"] == -(-long.tokens_max // 64) * 64  # the longest row, rounded up
    assert any("max_seq_length" in x and f"max {long.tokens_max}" in x for x in long.reasons)


def test_a_few_outliers_do_not_set_max_seq_length(tmp_path, tiny_model_dir, tok_for):
    rows = ROWS * 5 + [dict(ROWS[0], output=" ".join(["word"] * 400))]
    p = tmp_path / "outlier.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = recommend(model=tiny_model_dir, data_path=str(p), tokenizer_for=tok_for)
    assert r.config["max_seq_length"] == 64 < r.tokens_max
    assert any("1 longer get their prompts cut" in x for x in r.reasons)


def test_memory_decides_batch_and_a_ready_config_is_written(tmp_path, tiny_model_dir, tok_for):
    r = recommend(model=tiny_model_dir, data_path=_write(tmp_path, "jsonl"), tokenizer_for=tok_for)
    c = r.config
    assert c["per_device_train_batch_size"] == 8 and c["gradient_checkpointing"] is False  # a tiny model fits
    assert any("GiB free" in x and "estimated peak" in x for x in r.reasons)
    from tunerd.config.loader import load_config
    written = tmp_path / "rec.yaml"
    written.write_text(r.config_yaml)
    cfg = load_config(written)  # ready to train: valid keys, the data it was read from
    assert cfg.max_seq_length == c["max_seq_length"] and cfg.data.train.endswith("a.jsonl")
    assert r.config_yaml.startswith("# Written by `tunerctl recommend`")
