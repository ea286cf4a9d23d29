"""`tunerctl evaluate`: loss, perplexity and ROUGE/BLEU of the base and/or adapters, side by side;
or scores of predictions made anywhere (`--predictions P.jsonl --references R.jsonl`)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from tuner import Client
from tuner.connection import local_ref
from tuner.v1 import tuner_pb2 as pb

from .ui import as_dict, console, err, print_json, table

METRIC_COLUMNS = ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "exact_match")
PREDICTION_KEYS = ("prediction", "predictions", "generated", "output")
REFERENCE_KEYS = ("reference", "references", "target", "label")


def add_arguments(ev) -> None:
    ev.add_argument("--model", "-m", default="", help="base model (default: the job's, config's or adapter's)")
    ev.add_argument("--adapter", "-a", default="",
                    help="adapter dir, checkpoint dir, or job:<id> (default: the --job's adapter, else none)")
    ev.add_argument("--compare", action="append", default=[], metavar="ADAPTER",
                    help="also run this adapter/checkpoint on the same rows (repeatable; default: none)")
    ev.add_argument("--base", action="store_true",
                    help="also run the base model without adapter, base vs tuned (default: off)")
    ev.add_argument("--job", default="",
                    help="a job: its model, data split, max_seq_length and adapter (default: none)")
    ev.add_argument("--data", default="", help="a data file in any supported format (default: the job's or config's)")
    ev.add_argument("--config", default="", help="a config: its model and data (default: none)")
    ev.add_argument("--split", choices=["validation", "test"], default=None,
                    help="which split of the job's/config's data (default: test when data.test is set, "
                         "else validation)")
    ev.add_argument("--backend", default="", help="auto | mlx | torch (default: the job's, else auto)")
    ev.add_argument("--generate", "-n", type=int, default=0, metavar="N",
                    help="generate for the first N rows and score ROUGE/BLEU/exact match (default: 0, loss only)")
    ev.add_argument("--generate-batch-size", type=int, default=0, metavar="B",
                    help="generated rows decoded together (default: 8; 1: one at a time)")
    ev.add_argument("--tokenizer", choices=["whitespace", "char", "morpheme"], default="whitespace",
                    help="tokens for ROUGE/BLEU: words of any script, characters (CJK/Korean), or Korean "
                         "morphemes (kiwipiepy on the daemon) (default: whitespace)")
    ev.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: 0, greedy)")
    ev.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass (default: 1.0, off)")
    ev.add_argument("--seed", type=int, default=None, help="sampling seed (default: none)")
    ev.add_argument("--max-tokens", type=int, default=None, help="new tokens per answer (default: 128)")
    ev.add_argument("--predictions", default="",
                    help="JSONL/JSON rows with a prediction (and maybe a reference): score them, no model "
                         "(default: none)")
    ev.add_argument("--references", default="",
                    help="JSONL/JSON rows with a reference, row for row with --predictions (default: the "
                         "predictions' own reference field)")
    ev.add_argument("--retain", default="",
                    help="also evaluate this retain set of general prompts (a file, or 'general': the built-in "
                         "one): with --base, what the tuning made the model forget (default: the job's/config's "
                         "data.retain)")
    ev.add_argument("--show", type=int, default=3, help="print this many generations side by side (default: 3)")


def read_rows(path: str) -> list[dict]:
    text = Path(path).expanduser().read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        rows = json.loads(text)
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
    return [r if isinstance(r, dict) else {"prediction": r} for r in rows]


def _column(rows: list[dict], keys: tuple, path: str, what: str) -> list[str]:
    out = []
    for i, r in enumerate(rows, 1):
        key = next((k for k in keys if k in r), None)
        if key is None:
            raise ValueError(f"{path}: row {i} has no {what} (one of {', '.join(keys)}); its keys: {', '.join(r)}")
        v = r[key]
        out.append(v[0] if isinstance(v, list) and v else str(v))
    return out


def predictions_request(args) -> tuple[list[str], list[str]]:
    rows = read_rows(args.predictions)
    preds = _column(rows, PREDICTION_KEYS, args.predictions, "prediction")
    if args.references:
        refs = _column(read_rows(args.references), REFERENCE_KEYS, args.references, "reference")
    else:
        refs = _column(rows, REFERENCE_KEYS, args.predictions, "reference (or pass --references)")
    return preds, refs


def request(args) -> pb.EvaluateRequest:
    sp = pb.SamplingParams()
    for name in ("temperature", "top_p", "seed", "max_tokens"):
        if getattr(args, name) is not None:
            setattr(sp, name, getattr(args, name))
    req = pb.EvaluateRequest(model=args.model, adapter=args.adapter, backend=args.backend, job_id=args.job,
                             adapters=args.compare, compare_base=args.base, max_generations=args.generate,
                             generate_batch_size=max(args.generate_batch_size, 0),
                             tokenizer=args.tokenizer, split=args.split or "", base_dir=os.getcwd(), sampling=sp,
                             data_path=local_ref(args.data), config_path=local_ref(args.config),
                             retain=local_ref(args.retain))
    if args.predictions:
        preds, refs = predictions_request(args)
        req.predictions.extend(preds)
        req.references.extend(refs)
    return req


def run(c: Client, args) -> int:
    req = request(args)
    result = None
    progress = None
    try:
        for p in c.evaluate_stream(req):
            if p.HasField("result"):
                result = p.result
                break
            if args.json:
                print_json({"progress": as_dict(p)})
            elif p.rows_total:
                if progress is None:
                    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
                    progress = Progress(TextColumn("generating [bold]{task.fields[run]}[/]"), BarColumn(),
                                        MofNCompleteColumn(), TextColumn("ETA {task.fields[eta]}"),
                                        console=err, transient=True)
                    progress.start()
                    task = progress.add_task("gen", total=p.rows_total, run=p.run, eta="?")
                progress.update(task, completed=p.rows_done, run=p.run, eta=f"{p.eta_seconds:.0f}s")
    finally:
        if progress is not None:
            progress.stop()
    if result is None:
        raise RuntimeError("the daemon ended the evaluation without a result")
    if args.json:
        print_json(as_dict(result))
    else:
        print_result(result, args.show)
    return 0


def _fmt(k: str, v: float) -> str:
    return f"{v:.2f}" if k.endswith(("bleu", "perplexity")) else f"{v:.4f}"


def print_result(r, show: int = 3) -> None:
    runs = list(r.runs)
    has_gen = any(k in u.metrics for u in runs for k in METRIC_COLUMNS)
    has_loss = any(u.loss for u in runs)
    cols = (["loss", "perplexity"] if has_loss else []) + (list(METRIC_COLUMNS) if has_gen else [])
    head = f"split {r.split}, " if r.split else ""
    console.print(f"{head}{r.rows} rows" + (f"; metrics tokenized by [bold]{r.tokenizer}[/]" if has_gen else ""))
    rows = []
    for i, u in enumerate(runs):
        vals = {"loss": u.loss, "perplexity": u.perplexity, **dict(u.metrics)}
        cells = []
        for k in cols:
            cell = _fmt(k, vals.get(k, 0.0))
            if i > 0 and k in u.deltas:
                cell += f" ({'+' if u.deltas[k] >= 0 else ''}{_fmt(k, u.deltas[k])})"
            cells.append(cell)
        rows.append([u.label] + cells)
    table(["run"] + cols, rows)
    if len(runs) > 1:
        console.print(f"[dim](deltas against {runs[0].label})[/]")
    if any("retain_loss" in u.metrics for u in runs):
        print_retain(runs, show)
    if show and has_gen:
        for j in range(min(show, len(runs[0].generations))):
            g0 = runs[0].generations[j]
            console.print(f"\n[bold]row {g0.row}[/] {g0.prompt}")
            console.print(f"  [green]reference[/]  {g0.reference}")
            for u in runs:
                g = u.generations[j]
                console.print(f"  [bold]{u.label:>10}[/]  {g.prediction}  [dim]rougeL {g.scores.get('rougeL', 0):.3f}[/]")


RETAIN_COLUMNS = ("retain_loss", "retain_perplexity", "retain_rougeL", "retain_exact_match")


def print_retain(runs: list, show: int = 3) -> None:
    """The retain set (general prompts the model should keep answering), base vs tuned: a higher
    retain loss and changed answers are what the tuning made the model forget."""
    first = runs[0]
    cols = [k for k in RETAIN_COLUMNS if k in first.metrics] + (["retain_changed"] if len(runs) > 1 and any(
        "retain_changed" in u.metrics for u in runs) else [])
    console.print(f"\n[bold]retain set[/] ({first.metrics['retain_rows']:.0f} general prompts; forgetting shows "
                  f"as a higher retain loss and changed answers)")
    rows = []
    for i, u in enumerate(runs):
        cells = []
        for k in cols:
            v = u.metrics.get(k, 0.0)
            if k == "retain_changed":
                cells.append(f"{v:.0f} of {len(u.retain_generations)}" if i else "-")
                continue
            cell = _fmt(k, v)
            if i > 0 and k in u.deltas:
                cell += f" ({'+' if u.deltas[k] >= 0 else ''}{_fmt(k, u.deltas[k])})"
            cells.append(cell)
        rows.append([u.label] + cells)
    table(["run"] + [k.replace("retain_", "retain ").replace("_", " ") for k in cols], rows)
    for u in runs[1:]:
        up = u.deltas.get("retain_loss", 0.0)
        if up > 0:
            console.print(f"[bold yellow]{u.label}: retain loss up {up:.4f} against {first.label}[/] "
                          "(the model may have forgotten some of what it knew)")
    if show and len(runs) > 1 and first.retain_generations:
        diffs = [j for j, g in enumerate(first.retain_generations)
                 if any(" ".join(u.retain_generations[j].prediction.split()) != " ".join(g.prediction.split())
                        for u in runs[1:])]
        for j in diffs[:show]:
            g0 = first.retain_generations[j]
            console.print(f"\n[bold]retain row {g0.row}[/] {g0.prompt}")
            console.print(f"  [green]reference[/]  {g0.reference}")
            for u in runs:
                console.print(f"  [bold]{u.label:>10}[/]  {u.retain_generations[j].prediction}")
