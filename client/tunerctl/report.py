"""`tunerctl report JOB [--compare JOB2 ...] [-o FILE]` and the details of `tunerctl jobs show`.

Everything comes from the public API: GetJob (config, paths), WatchJob replay (steps, evals,
checkpoints, the finish), InspectData(job_id) (data statistics) and Evaluate(job_id, base vs tuned)
(generations side by side). The HTML is one self-contained file: plots are inline SVG drawn with
matplotlib (`pip install 'mactuner[report]'`), each with its numbers in a JSON block beside it.
"""
from __future__ import annotations

import html
import json
import os
import stat
import time
from pathlib import Path
from typing import Optional

from tuner import Client, TunerError
from tuner.v1 import tuner_pb2 as pb

from tunerd import plot
from tunerd.files import atomic_write_text

from .ui import as_dict

GENERATOR = '<meta name="generator" content="MacTuner tunerctl report">'   # how a report of ours is known

PLOTS = (  # key, title, y label, step field
    ("loss", "Loss", "loss", None),
    ("learning_rate", "Learning rate", "learning rate", "learning_rate"),
    ("tokens_per_second", "Throughput", "tokens/s", "tokens_per_second"),
    ("peak_memory", "Peak memory", "GiB", "peak_memory_bytes"),
    ("mfu", "Model FLOPs utilisation", "MFU", "mfu"),
)


# -- what the API says about a job ---------------------------------------------------------------
def job_details(c: Client, job_id: str) -> dict:
    """The job, and from its stored events: started, steps, eval history, checkpoints, finish."""
    job = c.job(job_id)
    d = {"job": as_dict(job, with_defaults=True), "started": {}, "steps": [], "evals": [], "checkpoints": [],
         "finished": {}, "logs": []}
    for e in c.watch(job_id, follow=False):
        kind = e.WhichOneof("event")
        if kind == "started":
            d["started"] = as_dict(e.started, with_defaults=True)
        elif kind == "step":
            d["steps"].append(as_dict(e.step, with_defaults=True))
        elif kind == "eval":
            d["evals"].append(as_dict(e.eval, with_defaults=True))
        elif kind == "checkpoint":
            d["checkpoints"].append(as_dict(e.checkpoint, with_defaults=True))
        elif kind == "finished":
            d["finished"] = as_dict(e.finished, with_defaults=True)
        elif kind == "log":
            d["logs"].append(as_dict(e.log, with_defaults=True))
    best = d["finished"].get("best_checkpoint") or next(
        (c["path"] for c in reversed(d["checkpoints"]) if c.get("is_best")), "")
    d["paths"] = {"output_dir": job.output_dir, "metrics": job.metrics_path, "tensorboard": job.tensorboard_dir,
                  "adapter": job.adapter_path, "best_checkpoint": best}
    return d


def collect(c: Client, job_id: str, generate: int = 8, max_tokens: int = 64, compare: tuple = ()) -> dict:
    d = job_details(c, job_id)
    d["compare"] = [job_details(c, j) for j in compare]
    d["notes"] = []
    d["data"] = d["generations"] = None
    try:
        d["data"] = as_dict(c.inspect_data(job_id=job_id), with_defaults=True)
    except TunerError as e:
        d["notes"].append(f"data statistics unavailable: {e.details}")
    if generate and d["job"]["state"] == "succeeded":
        try:
            r = c.evaluate(job_id=job_id, compare_base=True, max_generations=generate,
                           sampling=pb.SamplingParams(max_tokens=max_tokens))
            d["generations"] = as_dict(r, with_defaults=True)
        except TunerError as e:
            d["notes"].append(f"base vs tuned generations unavailable: {e.details}")
    return d


# -- plots ---------------------------------------------------------------------------------------
def _svg(series: dict, title: str, ylabel: str, xlabel: str = "step", widths: Optional[list] = None) -> str:
    """Lines (or, with `widths`, bars from x to x + width) as an SVG document (tunerd.plot)."""
    try:
        return plot.svg(series, title, ylabel, xlabel, widths)
    except ImportError as e:
        raise ValueError(f"tunerctl report draws its plots with matplotlib: pip install 'mactuner[report]' ({e})")


def _figure(key: str, title: str, ylabel: str, series: dict, **kw) -> str:
    data = {name: {"x": list(xs), "y": list(ys)} for name, (xs, ys) in series.items()}
    return (f'<figure class="plot" data-plot="{key}">{_svg(series, title, ylabel, **kw)}'
            f'<script type="application/json" class="plot-data">{json.dumps(data)}</script>'
            f'<figcaption>{html.escape(title)}</figcaption></figure>')


def _plots(d: dict) -> list[str]:
    jobs = [d] + d.get("compare", [])
    multi = len(jobs) > 1

    def label(j, what):
        return f"{j['job']['id']} {what}" if multi else what

    out = []
    for key, title, ylabel, field in PLOTS:
        series = {}
        for j in jobs:
            steps = j["steps"]
            if not steps:
                continue
            xs = [int(s["step"]) for s in steps]
            if key == "loss":
                series[label(j, "train")] = (xs, [s["loss"] for s in steps])
                if j["evals"]:
                    series[label(j, "eval")] = ([int(e["step"]) for e in j["evals"]], [e["eval_loss"] for e in j["evals"]])
            elif key == "peak_memory":
                series[label(j, "peak")] = (xs, [int(s[field]) / 2 ** 30 for s in steps])
            else:
                series[label(j, ylabel)] = (xs, [s[field] for s in steps])
        if series and any(any(v for v in ys) for _, ys in series.values()):
            out.append(_figure(key, title, ylabel, series))
    gen_keys = sorted({k for e in d["evals"] for k in e.get("metrics", {})
                       if k.startswith("eval_") and k[5:] in ("rouge1", "rouge2", "rougeL", "bleu", "exact_match")})
    if gen_keys:
        series = {k[5:]: ([int(e["step"]) for e in d["evals"]], [e["metrics"].get(k, 0.0) for e in d["evals"]])
                  for k in gen_keys if k != "eval_bleu"}
        out.append(_figure("eval_generation", "Generation metrics at eval", "F1 / share", series))
    data = d.get("data")
    if data and data.get("length_histogram"):
        hist = data["length_histogram"]
        out.append(_figure("length_histogram", "Training rows by token length", "rows",
                           {"rows": ([int(b["lo"]) for b in hist], [int(b["count"]) for b in hist])},
                           xlabel="tokens", widths=[max(int(b["hi"]) - int(b["lo"]), 1) for b in hist]))
    return out


# -- HTML ----------------------------------------------------------------------------------------
def _table(headers: list, rows: list, cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else html.escape(_fmt(c))}</td>" for c in r)
                   + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class _Raw(str):
    """Already-escaped HTML for a table cell."""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _section(title: str, body: str, sid: str) -> str:
    return f'<section id="{sid}"><h2>{html.escape(title)}</h2>{body}</section>'


CSS = """body{font:14px/1.45 -apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;
color:#222;padding:0 16px}h1{font-size:22px}h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:4px;
margin-top:28px}table{border-collapse:collapse;margin:8px 0;font-size:13px}td,th{border:1px solid #ddd;
padding:4px 8px;text-align:left;vertical-align:top}th{background:#f5f5f5}.plots{display:flex;flex-wrap:wrap;
gap:12px}figure.plot{margin:0;border:1px solid #eee;padding:4px}figure.plot svg{width:480px;height:auto}
figcaption{font-size:12px;color:#666;text-align:center}.pos{color:#0a7d22}.neg{color:#b3261e}
.muted{color:#777}td.text{max-width:300px;white-space:pre-wrap}"""


def render(d: dict) -> str:
    job, fin, st = d["job"], d["finished"], d["started"]
    title = f"MacTuner report — job {job['id']}" + (f" ({job['name']})" if job.get("name") else "")
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="muted">generated {time.strftime("%Y-%m-%d %H:%M:%S")} from the tunerd API</p>']
    last_eval = d["evals"][-1] if d["evals"] else {}
    summary = [["state", job["state"]], ["model", job["model"]], ["backend", job["backend"]],
               ["device", st.get("device", "")], ["dtype", st.get("dtype", "")],
               ["steps", f"{job['step']}/{job['total_steps']}"], ["train rows", st.get("train_rows", "")],
               ["eval rows", st.get("eval_rows", "")],
               ["trainable parameters", f"{st.get('trainable_params', 0)} of {st.get('total_params', 0)} "
                                        f"({st.get('trainable_percent', 0):.3f}%)"],
               ["final train loss", fin.get("final_loss", job.get("last_loss", 0.0))],
               ["final eval loss", last_eval.get("eval_loss", "")],
               ["final perplexity", last_eval.get("perplexity", "")],
               ["best checkpoint", d["paths"]["best_checkpoint"]], ["best metric", fin.get("best_metric", "")],
               ["peak memory", f"{int(fin.get('peak_memory_bytes', 0)) / 2 ** 30:.2f} GiB"],
               ["stopped early", fin.get("stopped_early", False)]]
    summary += [[k, v] for k, v in d["paths"].items() if k != "best_checkpoint"]
    parts.append(_section("Summary", _table(["", job["id"]], summary, "summary"), "summary"))
    if d.get("compare"):
        rows = []
        for j in [d] + d["compare"]:
            ev = j["evals"][-1] if j["evals"] else {}
            rows.append([j["job"]["id"], j["job"]["state"], j["job"]["step"], j["job"].get("last_loss", 0.0),
                         ev.get("eval_loss", ""), j["finished"].get("best_metric", "")])
        parts.append(_section("Jobs compared", _table(["job", "state", "steps", "train loss", "eval loss", "best metric"],
                                                      rows, "compare"), "compare"))
    plots = _plots(d)
    parts.append(_section("Curves", f'<div class="plots">{"".join(plots)}</div>' if plots
                          else '<p class="muted">no steps logged yet</p>', "curves"))
    if d["evals"]:
        keys = sorted({k for e in d["evals"] for k in e.get("metrics", {})} - {"eval_loss", "eval_perplexity"})
        rows = [[e["step"], round(float(e["epoch"]), 3), e["eval_loss"], e["perplexity"]]
                + [e["metrics"].get(k, "") for k in keys] for e in d["evals"]]
        parts.append(_section("Eval history", _table(["step", "epoch", "eval_loss", "perplexity"] + keys, rows,
                                                     "evals"), "evals"))
    parts.append(_generations(d.get("generations")))
    data = d.get("data")
    if data:
        rows = [["source", data["source"]], ["format", data["format"]], ["template", data.get("template", "")],
                ["train rows", data["train_rows"]], ["validation rows", data["validation_rows"]],
                ["max_seq_length", data["max_seq_length"]], ["tokens per row (mean / max)",
                                                              f"{data['tokens_mean']} / {data['tokens_max']}"],
                ["supervised tokens per row (mean)", data["response_tokens_mean"]],
                ["rows over max_seq_length", data["over_length_rows"]],
                ["prompts cut from the left", data["truncated_prompt_rows"]],
                ["answers that do not fit", data["overlong_rows"]],
                ["padding waste (in order / grouped / packed)",
                 f"{data['padding_waste_percent']}% / {data['padding_waste_grouped_percent']}% / "
                 f"{data['padding_waste_packed_percent']}%"]]
        parts.append(_section("Data", _table(["", ""], rows, "data"), "data"))
    try:
        cfg = json.loads(job.get("config_json") or "{}")
    except ValueError:
        cfg = {}
    flat = [[k, json.dumps(v, default=str) if isinstance(v, (dict, list)) else v] for k, v in cfg.items()]
    parts.append(_section("Config (as submitted)", _table(["key", "value"], flat, "config"), "config"))
    for note in d.get("notes", []):
        parts.append(f'<p class="muted">{html.escape(note)}</p>')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{GENERATOR}<title>{html.escape(title)}</title>'
            f'<style>{CSS}</style></head><body>{"".join(parts)}</body></html>\n')


def _delta(v: float) -> str:
    cls = "pos" if v > 0 else "neg" if v < 0 else "muted"
    return f'<span class="{cls}">{"+" if v >= 0 else ""}{v:.4f}</span>'


def _generations(g: Optional[dict]) -> str:
    if not g or not g.get("runs"):
        return ""
    runs = g["runs"]
    metric_keys = [k for k in ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "exact_match")
                   if k in runs[-1].get("metrics", {})]
    rows = []
    for u in runs:
        cells = [u["label"], u["loss"], u["perplexity"]]
        for k in metric_keys:
            v = u["metrics"].get(k, 0.0)
            cells.append(_Raw(html.escape(_fmt(v)) + (f" ({_delta(u['deltas'][k])})" if u is not runs[0] and k in
                                                      u.get("deltas", {}) else "")))
        rows.append(cells)
    body = _table(["run", "loss", "perplexity"] + metric_keys, rows, "runs")
    body += f'<p class="muted">split {html.escape(g.get("split", ""))}, metric tokenizer ' \
            f'{html.escape(g.get("tokenizer", ""))}; deltas against {html.escape(runs[0]["label"])}</p>'
    grows = []
    for i, g0 in enumerate(runs[0].get("generations", [])):
        row = [g0["row"], _Raw(f'<div class="text">{html.escape(g0["prompt"])}</div>'),
               _Raw(f'<div class="text">{html.escape(g0["reference"])}</div>')]
        for u in runs:
            gi = u["generations"][i]
            row.append(_Raw(f'<div class="text">{html.escape(gi["prediction"])}</div>'
                            f'<div class="muted">rougeL {gi["scores"].get("rougeL", 0.0):.3f}</div>'))
        grows.append(row)
    body += _table(["row", "prompt", "reference"] + [u["label"] for u in runs], grows, "generations")
    return _section("Base vs tuned", body, "generations")


def write_report(c: Client, job_id: str, out: str, compare: tuple = (), generate: int = 8, max_tokens: int = 64,
                 force: bool = False) -> Path:
    """Write the report at `out` (default report-JOB.html), atomically and never through a link;
    an existing file is replaced only when it is a report of ours, or with `force`."""
    path = Path(out or f"report-{job_id}.html")
    check_report_path(path, job_id, force)   # before the slow part
    d = collect(c, job_id, generate=generate, max_tokens=max_tokens, compare=compare)
    atomic_write_text(path, render(d))
    return path


def check_report_path(path: Path, job_id: str, force: bool = False) -> None:
    """ValueError naming the fix for a folder, a link, a special file, or a file that is not a
    MacTuner report (unless `force`)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise ValueError(f"report -o {path}: is a symbolic link (to {os.path.realpath(path)}); tunerctl does "
                         "not write through links: give another file name")
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"report -o {path}: is a folder; give a file name, e.g. -o {path / f'report-{job_id}.html'}")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"report -o {path}: is not a regular file; give another file name")
    with open(path, "rb") as f:
        ours = GENERATOR.encode() in f.read(4096)
    if not ours and not force:
        raise ValueError(f"report -o {path}: exists and is not a MacTuner report; choose another name, "
                         "or pass --force to replace it")
