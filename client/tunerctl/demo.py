"""`tunerctl demo`: tiny model + synthetic facts, fine-tuned through the daemon, base vs tuned."""
from __future__ import annotations

import json
import subprocess
import sys

from rich.table import Table
from tuner import Client
from tuner.v1 import tuner_pb2 as pb

from .ui import console, print_json


def _build_bundle(home) -> dict:
    """Build the demo model and data locally with the daemon's package (no ML imports here)."""
    with console.status("building a tiny Llama model, a BPE tokenizer and 32 synthetic facts..."):
        p = subprocess.run([sys.executable, "-m", "tunerd.demo", str(home / "demo")],
                           capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"building the demo failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _ask(c: Client, args, model: str, adapter: str, question: str) -> str:
    """Greedy answer to one question, collected from the Chat stream."""
    chunks = c.chat([{"role": "user", "content": question}], model=model, adapter=adapter, backend=args.backend,
                    sampling=pb.SamplingParams(temperature=0.0, max_tokens=24, seed=0))
    return "".join(chunk.delta for chunk in chunks).strip()


def run_demo(args, connect, watch) -> int:
    bundle = _build_bundle(args.home)
    c = connect(args)
    model, questions, answers = bundle["model"], bundle["questions"], bundle["answers"]
    if not args.json:
        console.print(f"[bold]1. the base model[/] ({model}) knows nothing yet:")
    base = [_ask(c, args, model, "", q) for q in questions]
    overrides = [f"backend={args.backend}"] + ([f"max_steps={args.steps}"] if args.steps else [])
    job = c.submit(config_path=bundle["config"], overrides=overrides, name="demo")
    if not args.json:
        for q, b in zip(questions, base):
            console.print(f"  [dim]{q}[/] → {b!r}")
        console.print(f"\n[bold]2. fine-tuning[/] (job {job.id}):")
    rc = watch(c, job.id, args)
    if rc != 0:
        return rc
    tuned = [_ask(c, args, model, f"job:{job.id}", q) for q in questions]
    right_base = sum(b == a for b, a in zip(base, answers))
    right_tuned = sum(t == a for t, a in zip(tuned, answers))
    if args.json:
        print_json({"job_id": job.id, "questions": questions, "expected": answers, "base": base,
                    "tuned": tuned, "base_correct": right_base, "tuned_correct": right_tuned})
    else:
        console.print("\n[bold]3. base vs tuned[/] (greedy decoding):")
        t = Table("question", "base model", "tuned model", "expected", box=None, header_style="bold")
        for q, b, tu, a in zip(questions, base, tuned, answers):
            t.add_row(q, b[:40], f"[green]{tu}[/]" if tu == a else f"[red]{tu}[/]", a)
        console.print(t)
        console.print(f"exact answers: base {right_base}/{len(questions)}, tuned {right_tuned}/{len(questions)}")
        console.print(f"\nchat with it: tunerctl chat --adapter job:{job.id}")
        console.print(f"its adapter:  tunerctl jobs show {job.id}")
    return 0 if right_tuned > right_base else 1
