"""Smoke test for bench/bench_scale.py, so the benchmark cannot rot: the mid shape's make-up at a toy
size (hidden flag --toy: bf16 checkpoint, tied embeddings, a model vocabulary larger than the
tokenizer's), one step of ours on torch in a child process, the JSON and the table."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_scale.py"


def test_bench_scale_one_step_of_ours(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_scale", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "scale.json"
    bench.main(["--toy", "--backend", "torch", "--device", "cpu", "--modes", "lora", "--runners", "ours",
                "--steps", "1", "--work", str(tmp_path / "work"), "--json", str(out)])
    res = json.loads(out.read_text())
    cfg = res["meta"]["model_config"]
    assert cfg["dtype"] == "bfloat16" and cfg["tie_word_embeddings"] and cfg["rope_theta"] == 500000.0
    assert cfg["vocab_size"] == bench.SHAPES["toy"]["model"]["model_vocab_size"]
    [r] = res["results"]
    assert "error" not in r, r.get("error")
    assert (r["runner"], r["backend"], r["mode"], r["steps"]) == ("ours", "torch", "lora", 1)
    assert r["tokens"] > 0 and r["tokens_per_s"] > 0 and r["peak_bytes"] > 0
    assert r["rss_growth_bytes"] is None or r["rss_growth_bytes"] >= 0
    assert r["dtype"] and r["packing"] is not None and r["started"]["total_params"] > 0
    assert "| torch | lora | ours |" in res["table"]
