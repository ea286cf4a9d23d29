"""`tunerctl train`, `tunerctl jobs list|show|watch|cancel|resume` and `tunerctl report`."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from rich.markup import escape
from tuner import Client

from ..progress import JobView, job_state_name
from ..ui import as_dict, console, err, print_json, table
from .common import EXIT_FAILED, EXIT_USAGE, client, short_ids, short_model, target
from .models import export_line


def cmd_train(args) -> int:
    cfg_path = Path(args.config).expanduser()
    req = {"overrides": args.overrides, "name": args.name, "base_dir": os.getcwd()}
    if target(args).is_local:
        req["config_path"] = str(cfg_path.resolve())
    else:  # a remote daemon cannot read our files: send the YAML text
        if not cfg_path.exists():
            raise FileNotFoundError(f"config file not found: {cfg_path}")
        req["config_yaml"] = cfg_path.read_text(encoding="utf-8")
    c = client(args)
    job = c.submit(**req)
    if args.detach:
        print_json(as_dict(job)) if args.json else console.print(
            f"submitted job [bold]{job.id}[/] ({job_state_name(job.state)}); "
            f"watch it with `tunerctl jobs watch {job.id}`")
        return 0
    if not args.json:
        console.print(f"job [bold]{job.id}[/] submitted" + (f", position {job.queue_position} in the queue"
                                                           if job.queue_position > 1 else ""))
    return watch(c, job.id, args, interactive=True)


def watch(c: Client, job_id: str, args, from_sequence: int = 0, follow: bool = True,
          interactive: bool = False) -> int:
    view = None if args.json else JobView(console)
    try:
        for e in c.watch(job_id, from_sequence=from_sequence, follow=follow):
            if args.json:
                print_json(as_dict(e))
            else:
                view.update(e)
    except KeyboardInterrupt:
        if view:
            view.stop()
        return _interrupted(c, job_id, args, interactive)
    finally:
        if view:
            view.stop()
    job = c.job(job_id)
    if not follow:
        return 0
    state = job_state_name(job.state)
    if not args.json:
        view.summary(job)
    return 0 if state == "succeeded" else EXIT_FAILED


def _interrupted(c: Client, job_id, args, interactive: bool) -> int:
    choice = "d"
    if interactive and sys.stdin.isatty():
        try:
            choice = input(f"\nDetach (job keeps running) or cancel job {job_id}? [D/c] ").strip().lower() or "d"
        except (EOFError, KeyboardInterrupt):
            choice = "d"
    if choice.startswith("c"):
        c.cancel(job_id)
        err.print(f"cancel requested for {job_id}; it will checkpoint and stop")
        return 130
    err.print(f"detached; the job keeps running. Re-attach: tunerctl jobs watch {job_id}")
    return 0


def cmd_jobs(args) -> int:
    c = client(args)
    if args.action == "list":
        every = c.jobs()   # all ids: the short ones must be unique among them
        jobs = every[:args.limit] if args.limit > 0 else every
        if args.json:
            for j in jobs:
                print_json(job_dict(j))
            return 0
        short = short_ids([j.id for j in every])
        table(["id", "name", "state", "step", "loss", "model", "created"],
              [[short[j.id], j.name, job_state_name(j.state), f"{j.step}/{j.total_steps}",
                f"{j.last_loss:.4f}" if j.step else "", short_model(j.model),
                time.strftime("%Y-%m-%d %H:%M", time.localtime(j.created_at))] for j in jobs],
              empty="no jobs yet: tunerctl train CONFIG", keep=(0,))
        return 0
    if args.action == "show":
        return _show(c, args)
    if args.action == "watch":
        return watch(c, args.job_id, args, args.from_sequence, follow=not args.no_follow)
    if args.action == "cancel":
        j = c.cancel(args.job_id)
        print_json(job_dict(j)) if args.json else console.print(
            f"{j.id}: {job_state_name(j.state)}" + (" (cancel requested; it checkpoints and stops)"
                                                    if job_state_name(j.state) == "running" else ""))
        return 0
    if args.action == "resume":
        j = c.resume(args.job_id)
        if args.detach:
            print_json(job_dict(j)) if args.json else console.print(f"{j.id}: {job_state_name(j.state)}")
            return 0
        return watch(c, j.id, args, from_sequence=j.last_sequence, interactive=True)
    return EXIT_USAGE


def _show(c: Client, args) -> int:
    from ..report import job_details
    details = job_details(c, args.job_id)
    d = details["job"]
    if args.json:
        print_json({**d, "eval_history": details["evals"], "best_checkpoint": details["paths"]["best_checkpoint"],
                    "paths": details["paths"]})
        return 0
    d.pop("config_json", None)
    exports = d.pop("exports", [])
    for k in ("created_at", "started_at", "finished_at"):
        d[k] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d[k])) if d.get(k) else "-"
    for k, v in d.items():
        console.print(f"[bold]{k:>15}[/] {v}")
    console.print(f"[bold]{'best checkpoint':>15}[/] {details['paths']['best_checkpoint'] or '-'}")
    for i, e in enumerate(exports):
        console.print(f"[bold]{'exported' if i == 0 else '':>15}[/] {escape(export_line(e))}")
    if details["evals"]:
        keys = sorted({k for e in details["evals"] for k in e["metrics"]} - {"eval_loss", "eval_perplexity"})
        console.print("\n[bold]eval history[/]")
        table(["step", "eval_loss", "perplexity"] + [k.removeprefix("eval_") for k in keys],
              [[e["step"], f"{e['eval_loss']:.4f}", f"{e['perplexity']:.2f}"]
               + [f"{e['metrics'].get(k, 0):.4g}" for k in keys] for e in details["evals"]])
    return 0


def job_dict(j) -> dict:
    return as_dict(j, with_defaults=True)


def cmd_report(args) -> int:
    from ..report import write_report
    path = write_report(client(args), args.job_id, args.output, tuple(args.compare), args.generate,
                        args.max_tokens, force=args.force)
    print_json({"path": str(path.resolve())}) if args.json else console.print(f"wrote {path}")
    return 0
