"""Evaluate through the real daemon and CLI: the job's own numbers, base vs tuned, ROUGE-based
checkpoint selection, and scoring predictions made elsewhere (DESIGN.md §7)."""
from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from daemon_utils import cli, json_lines, write_config

pytestmark = pytest.mark.slow


def _train(daemon, path: Path, bundle: dict, **overrides) -> dict:
    p = cli(daemon.home, "train", str(write_config(path, bundle, **overrides)), "--json", check=True)
    events = json_lines(p.stdout)
    return {"id": events[0]["job_id"], "config": path, "events": events,
            "evals": [e["eval"] for e in events if "eval" in e],
            "finished": next(e["finished"] for e in events if "finished" in e)}


@pytest.fixture(scope="module")
def rouge_job(daemon, demo_bundle, tmp_path_factory):
    """40 steps; at steps 20 and 40 an eval with generation metrics and a checkpoint; the best by rougeL is kept."""
    tmp = tmp_path_factory.mktemp("ev")
    test = tmp / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in demo_bundle["rows"][:5]))
    return _train(daemon, tmp / "rouge.yaml", demo_bundle, max_steps=40, eval_steps=20,
                  save_steps=20, eval_generate_rows=4, eval_generate_max_tokens=16, metric_for_best_model="rougeL",
                  load_best_model_at_end=True, data={"test": str(test)})


def _eval_at(job: dict, step: int) -> dict:
    return next(e for e in job["evals"] if int(e["step"]) == step)


def _evaluate(daemon, *args) -> dict:
    p = cli(daemon.home, "evaluate", *args, "--json")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return [x for x in json_lines(p.stdout) if "progress" not in x][-1]


def test_metric_for_best_model_rougeL_selects_the_best_rouge_checkpoint(rouge_job):
    evals = rouge_job["evals"]
    assert [int(e["step"]) for e in evals] == [20, 40]
    assert all({"eval_rouge1", "eval_rougeL", "eval_bleu", "eval_exact_match"} <= set(e["metrics"]) for e in evals)
    best = max(evals, key=lambda e: (e["metrics"]["eval_rougeL"], -int(e["step"])))  # ties: the earlier one
    fin = rouge_job["finished"]
    assert fin["best_checkpoint"].endswith(f"checkpoint-{best['step']}")
    assert fin["best_metric"] == pytest.approx(best["metrics"]["eval_rougeL"])


def test_evaluate_adapter_job_with_data_knows_the_model(daemon, rouge_job, demo_bundle):
    r = _evaluate(daemon, "--adapter", f"job:{rouge_job['id']}", "--data", demo_bundle["valid"])
    assert r["rows"] == 8 and r["loss"] > 0 and r["perplexity"] > 1


def test_evaluate_job_gives_the_jobs_own_eval_numbers(daemon, rouge_job):
    # the job's adapter is its best checkpoint (load_best_model_at_end): compare with that step's eval
    step = int(Path(rouge_job["finished"]["best_checkpoint"]).name.split("-")[1])
    r = _evaluate(daemon, "--job", rouge_job["id"], "--split", "validation")
    assert r["split"] == "validation"
    assert r["loss"] == pytest.approx(_eval_at(rouge_job, step)["eval_loss"], rel=1e-4)
    assert r["metrics"]["supervised_tokens"] == pytest.approx(_eval_at(rouge_job, step)["metrics"]["eval_tokens"])


def test_evaluate_job_defaults_to_its_test_split(daemon, rouge_job):
    r = _evaluate(daemon, "--job", rouge_job["id"])
    assert r["split"] == "test" and r["rows"] == 5


def test_evaluate_config_honours_its_max_seq_length(daemon, demo_bundle, tmp_path):
    # rows are 27 tokens; at 20 the prompts are cut, as in training's own eval
    job = _train(daemon, tmp_path / "short.yaml", demo_bundle, max_steps=10, eval_steps=10, save_steps=10,
                 max_seq_length=20)
    own = _eval_at(job, 10)
    r = _evaluate(daemon, "--config", str(job["config"]), "--adapter", f"job:{job['id']}")
    assert r["loss"] == pytest.approx(own["eval_loss"], rel=1e-4)
    assert r["metrics"]["supervised_tokens"] == pytest.approx(own["metrics"]["eval_tokens"])


def test_base_vs_tuned_side_by_side_the_adapter_wins(daemon, rouge_job):
    p = cli(daemon.home, "evaluate", "--job", rouge_job["id"], "--split", "validation", "--base", "--generate", "8",
            "--max-tokens", "16", "--json")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    lines = json_lines(p.stdout)
    progress = [x["progress"] for x in lines if "progress" in x]
    assert progress[-1]["rows_done"] == progress[-1]["rows_total"] == 16
    assert all(x.get("eta_seconds", 0) > 0 for x in progress if 0 < x.get("rows_done", 0) < x["rows_total"])
    base, tuned = lines[-1]["runs"]
    assert base["label"] == "base" and tuned["label"] == f"job:{rouge_job['id']}"
    assert len(base["generations"]) == len(tuned["generations"]) == 8
    assert [g["reference"] for g in base["generations"]] == [g["reference"] for g in tuned["generations"]]
    assert tuned["metrics"]["rougeL"] > base["metrics"]["rougeL"] + 0.2, (base["metrics"], tuned["metrics"])
    assert tuned["deltas"]["rougeL"] == pytest.approx(tuned["metrics"]["rougeL"] - base["metrics"]["rougeL"])
    assert tuned["deltas"]["loss"] < 0
    # the human view shows both runs and a generation side by side
    out = cli(daemon.home, "evaluate", "--job", rouge_job["id"], "--base", "--generate", "2", "--max-tokens", "16",
              check=True).stdout
    assert "base" in out and "rougeL" in out and "reference" in out


def test_base_vs_tuned_shows_the_retain_set_and_many_passes_warn(daemon, demo_bundle, tmp_path):
    # 32 rows, batch 8: 4 steps an epoch; 40 steps are 10 passes (issue 18: forgetting was invisible)
    job = _train(daemon, tmp_path / "retain.yaml", demo_bundle, max_steps=40, eval_steps=40, save_steps=40,
                 eval_generate_rows=2, eval_generate_max_tokens=8, data={"retain": "general"})
    started = next(e["started"] for e in job["events"] if "started" in e)
    assert any("10.0 passes over 32 training rows" in w and "forget" in w for w in started["warnings"])
    own = _eval_at(job, 40)["metrics"]
    assert own["retain_loss"] > 0 and "retain_changed" in own
    r = _evaluate(daemon, "--job", job["id"], "--split", "validation", "--base", "--generate", "3",
                  "--max-tokens", "8")
    base, tuned = r["runs"]
    assert len(base["retain_generations"]) == len(tuned["retain_generations"]) == 3
    assert base["retain_generations"][0]["prompt"] == "What is the capital of France?"
    assert base["metrics"]["retain_rows"] == tuned["metrics"]["retain_rows"] == 36
    assert tuned["metrics"]["retain_loss"] == pytest.approx(own["retain_loss"], rel=1e-4)  # the job's own number
    assert tuned["deltas"]["retain_loss"] == pytest.approx(tuned["metrics"]["retain_loss"]
                                                           - base["metrics"]["retain_loss"])
    assert tuned["metrics"]["retain_changed"] == sum(
        b["prediction"].split() != t["prediction"].split()
        for b, t in zip(base["retain_generations"], tuned["retain_generations"]))
    out = cli(daemon.home, "evaluate", "--job", job["id"], "--base", "--generate", "2", "--max-tokens", "8",
              check=True).stdout
    assert "retain set" in out and "36 general prompts" in out and "retain loss" in out and "retain changed" in out
    # --retain: any evaluation, here the base model on a data file
    r = _evaluate(daemon, "--model", demo_bundle["model"], "--data", demo_bundle["valid"], "--retain", "general")
    assert r["runs"][0]["metrics"]["retain_rows"] == 36 and r["runs"][0]["metrics"]["retain_loss"] > 0


def test_score_predictions_made_elsewhere_korean(daemon, tmp_path):
    one = tmp_path / "both.jsonl"
    one.write_text(json.dumps({"prediction": "나는 집에 간다", "reference": "나는 학교에 간다."}, ensure_ascii=False))
    r = _evaluate(daemon, "--predictions", str(one), "--tokenizer", "char")
    assert r["metrics"]["rouge1"] == pytest.approx(10 / 13)  # see test_eval_metrics
    preds, refs = tmp_path / "p.jsonl", tmp_path / "r.jsonl"
    preds.write_text('{"prediction": "the cat sat on the mat"}\n{"prediction": "Seoul"}\n')
    refs.write_text('{"reference": "the cat sat on a mat"}\n{"reference": "Seoul"}\n')
    r = _evaluate(daemon, "--predictions", str(preds), "--references", str(refs))
    assert r["metrics"]["exact_match"] == 0.5 and r["rows"] == 2
    assert [g["scores"]["exact_match"] for g in r["runs"][0]["generations"]] == [0.0, 1.0]
    bad = cli(daemon.home, "evaluate", "--predictions", str(preds), "--json")
    assert bad.returncode == 1 and "reference" in json_lines(bad.stdout)[-1]["error"]["message"]


def test_recommend_counts_rows_of_a_json_array_and_writes_a_config(daemon, demo_bundle, tmp_path):
    rows = [{"instruction": f"Say {i}.", "output": f"{i}"} for i in range(12)]
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(rows, indent=2))  # 12 rows, 50 lines
    out = tmp_path / "rec.yaml"
    p = cli(daemon.home, "recommend", "--model", demo_bundle["model"], "--data", str(data), "--write", str(out),
            "--json")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    r = json_lines(p.stdout)[-1]
    assert r["train_rows"] == 12 and r["tokens_max"] > 0
    assert r["config"]["max_seq_length"] == 64
    assert "12 training rows" in out.read_text()


class _Html(HTMLParser):
    """Figures (data-plot, has an <svg>, its JSON numbers) and tables (class -> rows of cell text)."""

    def __init__(self):
        super().__init__()
        self.plots, self.tables, self.external = {}, {}, []
        self._fig = self._json = self._table = self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "img", "link", "iframe") and (a.get("src") or a.get("href")):
            self.external.append(a)
        if tag == "figure":
            self._fig = a.get("data-plot")
            self.plots[self._fig] = {"svg": False, "data": None}
        elif tag == "svg" and self._fig:
            self.plots[self._fig]["svg"] = True
        elif tag == "script" and a.get("class") == "plot-data":
            self._json = ""
        elif tag == "table":
            self._table = self.tables.setdefault(a.get("class", ""), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "script" and self._json is not None:
            self.plots[self._fig]["data"] = json.loads(self._json)
            self._json = None
        elif tag == "figure":
            self._fig = None
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._json is not None:
            self._json += data
        elif self._cell is not None:
            self._cell += data


def test_report_html_holds_the_jobs_plots_and_numbers(daemon, rouge_job, tmp_path):
    out = tmp_path / "r.html"
    p = cli(daemon.home, "report", rouge_job["id"], "-o", str(out), "--generate", "4", "--max-tokens", "16")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    doc = _Html()
    doc.feed(out.read_text(encoding="utf-8"))
    assert not doc.external  # self-contained: opens without a network
    steps = [e["step"] for e in rouge_job["events"] if "step" in e]
    assert {"loss", "learning_rate", "tokens_per_second", "peak_memory", "eval_generation",
            "length_histogram"} <= set(doc.plots)
    assert all(p["svg"] for p in doc.plots.values())
    loss = doc.plots["loss"]["data"]
    assert loss["train"]["x"] == [int(s["step"]) for s in steps]
    assert loss["train"]["y"] == pytest.approx([s["loss"] for s in steps])
    assert loss["eval"]["y"] == pytest.approx([e["eval_loss"] for e in rouge_job["evals"]])
    assert doc.plots["eval_generation"]["data"]["rougeL"]["y"] == pytest.approx(
        [e["metrics"]["eval_rougeL"] for e in rouge_job["evals"]])
    evals = doc.tables["evals"]
    assert [int(r[0]) for r in evals[1:]] == [20, 40]
    summary = dict(r[:2] for r in doc.tables["summary"][1:])
    assert summary["best checkpoint"] == rouge_job["finished"]["best_checkpoint"]
    assert summary["metrics"].endswith("metrics.jsonl")
    runs = doc.tables["runs"]
    assert [r[0] for r in runs[1:]] == ["base", f"job:{rouge_job['id']}"]
    gens = doc.tables["generations"]
    assert gens[0][:3] == ["row", "prompt", "reference"] and len(gens) == 5
    data = dict(r[:2] for r in doc.tables["data"][1:])
    assert data["format"] == "prompt_response"


def test_jobs_show_lists_eval_history_and_paths(daemon, rouge_job):
    r = json_lines(cli(daemon.home, "jobs", "show", rouge_job["id"], "--json", check=True).stdout)[-1]
    assert [int(e["step"]) for e in r["eval_history"]] == [20, 40]
    assert r["best_checkpoint"] == rouge_job["finished"]["best_checkpoint"]
    assert Path(r["paths"]["metrics"]).is_file() and Path(r["paths"]["tensorboard"]).is_dir()
    assert Path(r["paths"]["adapter"]).is_dir()
    text = cli(daemon.home, "jobs", "show", rouge_job["id"], check=True).stdout
    assert "eval history" in text and "metrics.jsonl" in text and "rougeL" in text


def test_evaluate_an_adapter_directory_names_its_own_base(daemon, rouge_job, demo_bundle):
    adapter = rouge_job["finished"]["adapter_path"]
    r = _evaluate(daemon, "--adapter", adapter, "--data", demo_bundle["valid"], "--backend", "mlx")
    by_job = _evaluate(daemon, "--adapter", f"job:{rouge_job['id']}", "--data", demo_bundle["valid"])
    assert r["loss"] == pytest.approx(by_job["loss"], rel=1e-5)


def test_early_stopping_follows_rougeL(daemon, demo_bundle, tmp_path):
    # no ROUGE-L gain can exceed a threshold of 1.0: the second eval stops the run
    job = _train(daemon, tmp_path / "es.yaml", demo_bundle, max_steps=40, eval_steps=10, save_steps=10,
                 eval_generate_rows=2, eval_generate_max_tokens=8, metric_for_best_model="rougeL",
                 early_stopping_patience=1, early_stopping_threshold=1.0)
    assert job["finished"]["stopped_early"] and job["finished"]["steps"] == 20
    logs = [e["log"]["message"] for e in job["events"] if "log" in e]
    assert any("eval_rougeL did not improve" in m for m in logs), logs
