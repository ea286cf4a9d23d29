"""The README.md model card of a Hub push (export/hub.py), from the job's own record and events.

    card(facts, repo, contents) -> str
    loss_svg(facts) -> str | None       the loss plot (tunerd.plot), None without matplotlib or steps

`facts` is plain data (jobs/exports.py builds it from the job store): job_id, base_model, config
(the resolved config dict), started (the Started event: rows, steps), steps (Step events: loss),
evals (Eval events: eval_loss) and finished (the Finished event). `contents` says what the repo
holds: layouts ("peft", "mlx"), fused (bool), gguf (the file name or ""), plot (the plot's file
name or ""). Absolute local paths are shown by their last part only: a public card does not name
folders on the user's machine.
"""
from __future__ import annotations

import os
from pathlib import PurePath

import yaml


def loss_svg(facts: dict):
    from .. import plot
    steps = facts.get("steps") or []
    if not steps:
        return None
    series = {"train": ([int(s.get("step", 0)) for s in steps], [float(s.get("loss", 0.0)) for s in steps])}
    evals = facts.get("evals") or []
    if evals:
        series["eval"] = ([int(e.get("step", 0)) for e in evals], [float(e.get("eval_loss", 0.0)) for e in evals])
    try:
        return plot.svg(series, "Loss", "loss")
    except ImportError:
        return None


def _public(value):
    """The config with absolute paths shortened to their file or folder name."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if k != "token"}
    if isinstance(value, list):
        return [_public(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return PurePath(value).name
    return value


def _data_files(train) -> list[str]:
    items = train if isinstance(train, list) else [train]
    out = []
    for item in items:
        if isinstance(item, dict):
            item = item.get("path") or item.get("name") or ""
        if item:
            out.append(str(_public(str(item))))
    return out


def metrics(facts: dict) -> dict:
    """final and best numbers: final_loss, steps, final_eval_loss, best_eval_loss, best_step."""
    fin, steps, evals = facts.get("finished") or {}, facts.get("steps") or [], facts.get("evals") or []
    out = {"steps": int(fin.get("steps") or (steps[-1].get("step", 0) if steps else 0)),
           "final_loss": fin.get("final_loss", steps[-1].get("loss") if steps else None)}
    if evals:
        best = min(evals, key=lambda e: e.get("eval_loss", float("inf")))
        out.update(final_eval_loss=evals[-1].get("eval_loss"), best_eval_loss=best.get("eval_loss"),
                   best_step=int(best.get("step", 0)), final_perplexity=evals[-1].get("perplexity"))
    return out


def _num(v) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def card(facts: dict, repo: str, contents: dict) -> str:
    cfg, started = facts.get("config") or {}, facts.get("started") or {}
    base = str(_public(facts.get("base_model") or cfg.get("model", "")))
    data = cfg.get("data") or {}
    fused, gguf, layouts = contents.get("fused"), contents.get("gguf", ""), contents.get("layouts", ())
    m = metrics(facts)
    tags = ["mactuner", "text-generation"] + ([] if fused else ["lora", "peft"]) + (["gguf"] if gguf else [])
    front = {"base_model": base, "library_name": "transformers" if fused else "peft", "tags": tags,
             "pipeline_tag": "text-generation"}
    what = "a fine-tuned model (the adapter fused into its base)" if fused else f"a {cfg.get('peft_adapter') or 'LoRA'} adapter"
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {repo.split('/')[-1]}", "",
             f"{what[0].upper()}{what[1:]} for [{base}](https://huggingface.co/{base}), fine-tuned with MacTuner "
             f"(job `{facts.get('job_id', '')}`).", "",
             "## Training data", "",
             f"- files: {', '.join(f'`{f}`' for f in _data_files(data.get('train'))) or '-'}",
             f"- rows: {started.get('train_rows', 0)} train, {started.get('eval_rows', 0)} validation",
             f"- format: {data.get('format', 'auto')}" + (" (detected from the columns)" if data.get("format", "auto") == "auto" else ""),
             "", "## Results", "", "| metric | value |", "|---|---|",
             f"| steps | {m['steps']} |", f"| final train loss | {_num(m['final_loss'])} |"]
    if "best_eval_loss" in m:
        lines += [f"| final eval loss | {_num(m['final_eval_loss'])} |",
                  f"| best eval loss | {_num(m['best_eval_loss'])} (step {m['best_step']}) |",
                  f"| final perplexity | {_num(m['final_perplexity'])} |"]
    if contents.get("plot"):
        lines += ["", f"![training and eval loss]({contents['plot']})"]
    lines += ["", "## Config", "", "```yaml", yaml.safe_dump(_public(cfg), sort_keys=False).strip(), "```", "",
              "## How to use it", ""]
    lines += _usage(repo, base, fused, gguf, layouts)
    return "\n".join(lines) + "\n"


def _usage(repo: str, base: str, fused: bool, gguf: str, layouts) -> list[str]:
    out = []
    if fused:
        out += ["### transformers", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                f'model = AutoModelForCausalLM.from_pretrained("{repo}")',
                f'tokenizer = AutoTokenizer.from_pretrained("{repo}")', "```", "",
                "### mlx-lm", "", "```bash", f'mlx_lm.generate --model {repo} --prompt "Hello"', "```", ""]
    else:
        if "peft" in layouts:
            out += ["### peft", "", "```python", "from peft import AutoPeftModelForCausalLM",
                    "from transformers import AutoTokenizer",
                    f'model = AutoPeftModelForCausalLM.from_pretrained("{repo}")',
                    f'tokenizer = AutoTokenizer.from_pretrained("{base}")', "```", ""]
        if "mlx" in layouts:
            out += ["### mlx-lm", "", "The mlx-lm layout is in `mlx/`:", "", "```bash",
                    f"hf download {repo} --local-dir {repo.split('/')[-1]}",
                    f"mlx_lm.generate --model {base} --adapter-path {repo.split('/')[-1]}/mlx --prompt \"Hello\"",
                    "```", ""]
    if gguf:
        out += ["### llama.cpp", "", "```bash", f"llama-cli --hf-repo {repo} --hf-file {gguf} -p \"Hello\"",
                f"# or: hf download {repo} {gguf} --local-dir . && llama-cli -m {gguf}", "```", "",
                "### Ollama", "", "```bash", f"ollama run hf.co/{repo}", "```", ""]
    else:
        out += ["### llama.cpp and Ollama", "", "Export a GGUF first (`tunerctl export JOB --format gguf -o model.gguf`, "
                "or push again with `--gguf f16`), then `llama-cli -m model.gguf` or `ollama run hf.co/" + repo + "`.", ""]
    return out
