"""task: dpo learns a preference through the daemon (`tunerctl train`), on both backends.

The demo's synthetic pairs (demo/tiny.synthetic_preferences): the chosen answer is a whole sentence
("The capital of Sebrin is Rosewater."), the rejected one the bare value ("Rosewater."); 48 pairs to
train on, 16 held out as the validation set. At step 1 the adapter is still the base (LoRA B = 0),
so every reward is 0 and no pair is preferred (rewards/accuracies 0, TRL's strict >); after a short
run the held-out pairs' eval_rewards/accuracies is >= 0.9 with a clear margin, and greedy answers
to held-out questions take the chosen style (they start with "The"), which the base's do not.
"""
from __future__ import annotations

import json
import math

import pytest

from daemon_utils import cli, json_lines, write_config

STEPS = 12


def _held_out(bundle, n=4):
    return [json.loads(line)["prompt"] for line in open(bundle["preference_valid"], encoding="utf-8")][:n]


def _answers(home, backend, model_args, prompts):
    out = []
    for p in prompts:
        events = json_lines(cli(home, "chat", *model_args, "--backend", backend, "-p", p, "--json",
                                "--temperature", "0", "--max-tokens", "8", check=True).stdout)
        out.append("".join(e["delta"] for e in events if "delta" in e))
    return out


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_dpo_raises_held_out_reward_accuracy_and_shifts_the_style(daemon, demo_bundle, tmp_path, backend):
    if backend == "mlx":
        pytest.importorskip("mlx.core")
    cfg = write_config(tmp_path / "dpo.yaml", demo_bundle, backend=backend, task="dpo", beta=0.1, max_steps=STEPS,
                       logging_steps=1, eval_steps=STEPS, save_steps=1000, learning_rate=0.005,
                       data={"train": demo_bundle["preference_train"],
                             "validation": demo_bundle["preference_valid"]})
    p = cli(daemon.home, "train", str(cfg), "--json", check=True)
    events = json_lines(p.stdout)
    steps = [e["step"] for e in events if "step" in e]
    evals = [e["eval"]["metrics"] for e in events if "eval" in e]
    job = next(e["job_id"] for e in events if "finished" in e)
    first = steps[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)   # policy == reference
    assert first["metrics"]["rewards/accuracies"] == 0.0 and first["metrics"]["rewards/margins"] == 0.0
    assert steps[-1]["step"] == STEPS and steps[-1]["loss"] < 0.5 * math.log(2), [s["loss"] for s in steps]
    last = evals[-1]
    assert last["eval_rewards/accuracies"] >= 0.9, last
    assert last["eval_rewards/margins"] > 0.5 and last["eval_rewards/chosen"] > last["eval_rewards/rejected"], last
    assert last["eval_loss"] < 0.5 * math.log(2), last

    prompts = _held_out(demo_bundle)
    tuned = _answers(daemon.home, backend, ["--adapter", f"job:{job}"], prompts)
    base = _answers(daemon.home, backend, ["--model", demo_bundle["model"]], prompts)
    print(f"{backend}: step 1 loss {first['loss']:.4f}; after {STEPS} steps held-out accuracy "
          f"{last['eval_rewards/accuracies']:.2f}, margin {last['eval_rewards/margins']:.2f}; tuned {tuned}, base {base}")
    assert sum(a.strip().startswith("The") for a in tuned) >= 3, tuned
    assert sum(a.strip().startswith("The") for a in base) <= 1, base
