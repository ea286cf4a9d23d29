"""tunerctl: every command is a call to the daemon's public gRPC API (proto/tuner/v1)."""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Iterator

import grpc
from tuner.v1 import tuner_pb2 as pb

from . import service as svc
from .connection import (DaemonUnavailable, Target, describe_holder, connect, default_home, is_healthy,
                         local_ref, lock_holder, open_channel, start_daemon)
from .progress import DownloadView, JobView, job_state_name
from .ui import as_dict, console, err, print_json, print_json_lines, table

EXIT_FAILED = 1
EXIT_USAGE = 2


# -- arguments --------------------------------------------------------------------------------------
def _common() -> argparse.ArgumentParser:
    """Global options, accepted before or after the subcommand."""
    c = argparse.ArgumentParser(add_help=False)
    S = argparse.SUPPRESS
    c.add_argument("--home", type=Path, default=S, help="daemon state dir (default $TUNER_HOME or ~/.tuner)")
    c.add_argument("--socket", type=Path, default=S, help="Unix socket (default $TUNER_HOME/tunerd.sock)")
    c.add_argument("--listen", default=S, metavar="HOST:PORT", help="talk to a daemon over TCP instead")
    c.add_argument("--token", default=S, help="bearer token for TCP (default $TUNER_HOME/token or $TUNER_TOKEN)")
    c.add_argument("--tls-ca", default=S, help="CA certificate for a TLS TCP daemon")
    c.add_argument("--json", action="store_true", default=S, help="machine-readable output (JSON lines)")
    return c


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    p = argparse.ArgumentParser(prog="tunerctl", parents=[common],
                                description="MacTuner: fine-tune LLMs with a local daemon (tunerd).")
    p.add_argument("--version", action="store_true",
                   help="print tunerctl's version and, if one is running, the daemon's (starts none)")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    def cmd(parent, name, help, **kw):
        return parent.add_parser(name, parents=[common], help=help, description=help, **kw)

    t = cmd(sub, "train", "submit a training job and watch it with a live progress bar")
    t.add_argument("config", help="YAML config (see configs/)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set lora_r=8 --set data.train=x.jsonl")
    t.add_argument("--name", default="", help="a name for the job")
    t.add_argument("--detach", "-d", action="store_true", help="submit and return the job id at once")

    j = cmd(sub, "jobs", "list, show, watch, cancel and resume jobs")
    js = j.add_subparsers(dest="action", required=True, metavar="ACTION")
    jl = cmd(js, "list", "list jobs, newest first")
    jl.add_argument("--limit", type=int, default=20)
    cmd(js, "show", "show one job").add_argument("job_id", help=JOB_HELP)
    jw = cmd(js, "watch", "stream a job's events (replays stored ones first)")
    jw.add_argument("job_id", help=JOB_HELP)
    jw.add_argument("--from", dest="from_sequence", type=int, default=0, help="start at this sequence number")
    jw.add_argument("--no-follow", action="store_true", help="print stored events and exit")
    cmd(js, "cancel", "cancel a queued or running job").add_argument("job_id", help=JOB_HELP)
    jr = cmd(js, "resume", "resume an interrupted, failed or cancelled job from its latest checkpoint")
    jr.add_argument("job_id", help=JOB_HELP)
    jr.add_argument("--detach", "-d", action="store_true")

    m = cmd(sub, "models", "resident models: list, load, unload")
    ms = m.add_subparsers(dest="action", required=True, metavar="ACTION")
    cmd(ms, "list", "models held in memory")
    ml = cmd(ms, "load", "load a model and keep it resident")
    ml.add_argument("model")
    ml.add_argument("--backend", default="auto")
    ml.add_argument("--quantization", default="none")
    ml.add_argument("--dtype", default="auto")
    ml.add_argument("--adapter", "-a", default="", help="also attach this adapter (dir or job:<id>) to the base")
    ml.add_argument("--keep-alive", type=float, default=0.0, help="seconds (< 0: forever)")
    mu = cmd(ms, "unload", "free a resident model (all its adapters), or with --adapter only that adapter")
    mu.add_argument("model", nargs="?", default="")
    mu.add_argument("--adapter", "-a", default="", help="detach only this adapter (dir or job:<id>)")
    mu.add_argument("--backend", default="", help="only the base on this backend")
    mu.add_argument("--quantization", default="")
    mu.add_argument("--dtype", default="")

    c = cmd(sub, "chat", "chat with a model (interactive, or one-shot with -p)")
    c.add_argument("--prompt", "-p", default=None,
                   help="one-shot: answer this and exit (default: none, an interactive session)")
    c.add_argument("--system", "-s", default="", help="system prompt (default: none)")
    _generation_args(c)
    g = cmd(sub, "generate", "plain completion: continue a text as it is (no chat template)")
    g.add_argument("--prompt", "-p", required=True, help="the text to continue")
    _generation_args(g)

    d = cmd(sub, "daemon", "start, stop, status and logs of the local daemon")
    ds = d.add_subparsers(dest="action", required=True, metavar="ACTION")
    dst = cmd(ds, "start", "start tunerd in the background")
    dst.add_argument("--http", default="", metavar="[HOST:]PORT",
                     help="also serve the OpenAI-compatible API (/v1) on loopback, e.g. 127.0.0.1:8080")
    dst.add_argument("--http-host", default="", help="serve --http on this address (bearer token required)")
    dst.add_argument("--http-no-auth", action="store_true",
                     help="no bearer token on --http (loopback only): any local user and any web page can use it")
    cmd(ds, "stop", "stop tunerd (a running job is checkpointed and marked interrupted)")
    cmd(ds, "status", "is tunerd running? version, backends, memory")
    dl = cmd(ds, "logs", "print the daemon log")
    dl.add_argument("-n", type=int, default=50, help="last N lines")
    dl.add_argument("-f", "--follow", action="store_true")

    s = cmd(sub, "service", "run tunerd as a launchd agent (macOS) or systemd user unit (Linux)")
    ss = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help in (("install", "install and start the service"), ("uninstall", "stop and remove it"),
                       ("status", "is it installed and running?")):
        x = cmd(ss, name, help)
        x.add_argument("--platform", choices=["launchd", "systemd"], default="",
                       help="render for this service manager (default: this OS's)")
        if name == "install":
            x.add_argument("--dry-run", action="store_true", help="print the service file, change nothing")

    dm = cmd(sub, "demo", "build a tiny model + data, fine-tune it live, then chat: base vs tuned")
    dm.add_argument("--steps", type=int, default=0, help="override the demo's max_steps")
    dm.add_argument("--backend", default="auto")

    da = cmd(sub, "data", "inspect training data")
    das = da.add_subparsers(dest="action", required=True, metavar="ACTION")
    di = cmd(das, "inspect", "rows, format, token lengths, truncation, padding waste, loss masks")
    di.add_argument("source", help="a config (.yaml), or a data file, directory or hub dataset id")
    di.add_argument("--model", default="",
                    help="count tokens with this model's tokenizer (default: a config's model; for data alone "
                         "none: formats, columns and bad rows only)")
    di.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the config (repeatable; default: none), e.g. --set data.system_prompt=...")
    di.add_argument("--batch-size", type=int, default=0,
                    help="for the padding-waste figures (default: the config's per_device_train_batch_size)")
    di.add_argument("--max-seq-length", type=int, default=0, help="(default: the config's max_seq_length)")

    from . import evaluate as evaluate_cmd
    ev = cmd(sub, "evaluate", "loss, perplexity and ROUGE/BLEU of a model, adapters or predictions; base vs tuned")
    evaluate_cmd.add_arguments(ev)

    rc = cmd(sub, "recommend", "suggest hyper-parameters for a model and data set")
    rc.add_argument("--model", "-m", default="")
    rc.add_argument("--config", default="")
    rc.add_argument("--data", default="", help="a data file, directory or hub dataset id (rows, token lengths)")
    rc.add_argument("--rows", type=int, default=0, help="training rows (else counted from the data)")
    rc.add_argument("--write", default="", metavar="CONFIG", help="write the advice as a commented config")

    ad = cmd(sub, "adapters", "list, export and fuse trained adapters")
    ads = ad.add_subparsers(dest="action", required=True, metavar="ACTION")
    cmd(ads, "list", "adapters from finished jobs")
    force_help = ("write into a folder that holds other files too: files of the same names are replaced, "
                  "nothing else is touched")
    adapter_help = "adapter folder, or a job as ID or job:ID (an id, a unique prefix of one, or latest; a path wins)"
    ae = cmd(ads, "export", "copy an adapter in one layout (peft or mlx)")
    ae.add_argument("adapter", help=adapter_help)
    ae.add_argument("out_dir", help="a new or empty folder (or one exported to before)")
    ae.add_argument("--layout", choices=["peft", "mlx"], default="peft")
    ae.add_argument("--force", action="store_true", help=force_help)
    af = cmd(ads, "fuse", "merge an adapter into its base and write a standalone model")
    af.add_argument("adapter", help=adapter_help)
    af.add_argument("out_dir", help="a new or empty folder (or one fused into before)")
    af.add_argument("--model", default="", help="base model (default: the adapter's)")
    af.add_argument("--dequantize", action="store_true", help="write a de-quantized (16/32-bit) model")
    af.add_argument("--force", action="store_true", help=force_help)

    rp = cmd(sub, "report", "write a self-contained HTML report of a job: curves, metrics, data, base vs tuned")
    rp.add_argument("job_id")
    rp.add_argument("--compare", action="append", default=[], metavar="JOB", help="overlay another job (repeatable)")
    rp.add_argument("-o", "--output", default="", help="HTML file to write (default report-JOB.html)")
    rp.add_argument("--force", action="store_true", help="replace an existing file that is not a MacTuner report")
    rp.add_argument("--generate", type=int, default=8, help="rows to generate for base vs tuned (0: none)")
    rp.add_argument("--max-tokens", type=int, default=64, help="new tokens per generated answer")

    cmd(sub, "info", "daemon version, backends, devices, memory")
    return p


def parse(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.cmd and not args.version:
        parser.error("the following arguments are required: COMMAND")
    for k, v in (("home", None), ("socket", None), ("listen", ""), ("token", ""), ("tls_ca", ""), ("json", False)):
        if not hasattr(args, k):
            setattr(args, k, v)
    args.home = (args.home or default_home()).expanduser().resolve()
    return args


def target(args) -> Target:
    return Target(home=args.home, socket=args.socket, listen=args.listen, token=args.token, tls_ca=args.tls_ca)


def stub(args, autostart: bool = True):
    s, _ = connect(target(args), autostart=autostart)
    return s


# -- commands ---------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    cfg_path = Path(args.config).expanduser()
    req = pb.SubmitJobRequest(overrides=args.overrides, name=args.name, base_dir=os.getcwd())
    if target(args).is_local:
        req.config_path = str(cfg_path.resolve())
    else:  # a remote daemon cannot read our files: send the YAML text
        if not cfg_path.exists():
            raise FileNotFoundError(f"config file not found: {cfg_path}")
        req.config_yaml = cfg_path.read_text(encoding="utf-8")
    s = stub(args)
    job = s.SubmitJob(req)
    if args.detach:
        print_json(as_dict(job)) if args.json else console.print(
            f"submitted job [bold]{job.id}[/] ({job_state_name(job.state)}); "
            f"watch it with `tunerctl jobs watch {job.id}`")
        return 0
    if not args.json:
        console.print(f"job [bold]{job.id}[/] submitted" + (f", position {job.queue_position} in the queue"
                                                           if job.queue_position > 1 else ""))
    return watch(s, job.id, args, interactive=True)


def watch(s, job_id: str, args, from_sequence: int = 0, follow: bool = True, interactive: bool = False) -> int:
    view = None if args.json else JobView(console)
    try:
        for e in s.WatchJob(pb.WatchJobRequest(job_id=job_id, from_sequence=from_sequence, follow=follow)):
            if args.json:
                print_json(as_dict(e))
            else:
                view.update(e)
    except KeyboardInterrupt:
        if view:
            view.stop()
        return _interrupted(s, job_id, args, interactive)
    finally:
        if view:
            view.stop()
    job = s.GetJob(pb.GetJobRequest(job_id=job_id))
    if not follow:
        return 0
    state = job_state_name(job.state)
    if not args.json:
        view.summary(job)
    return 0 if state == "succeeded" else EXIT_FAILED


def _interrupted(s, job_id, args, interactive: bool) -> int:
    choice = "d"
    if interactive and sys.stdin.isatty():
        try:
            choice = input(f"\nDetach (job keeps running) or cancel job {job_id}? [D/c] ").strip().lower() or "d"
        except (EOFError, KeyboardInterrupt):
            choice = "d"
    if choice.startswith("c"):
        s.CancelJob(pb.CancelJobRequest(job_id=job_id))
        err.print(f"cancel requested for {job_id}; it will checkpoint and stop")
        return 130
    err.print(f"detached; the job keeps running. Re-attach: tunerctl jobs watch {job_id}")
    return 0


def cmd_jobs(args) -> int:
    s = stub(args)
    if args.action == "list":
        every = s.ListJobs(pb.ListJobsRequest()).jobs   # all ids: the short ones must be unique among them
        jobs = every[:args.limit] if args.limit > 0 else every
        if args.json:
            for j in jobs:
                print_json(_job_dict(j))
            return 0
        short = short_ids([j.id for j in every])
        table(["id", "name", "state", "step", "loss", "model", "created"],
              [[short[j.id], j.name, job_state_name(j.state), f"{j.step}/{j.total_steps}",
                f"{j.last_loss:.4f}" if j.step else "", _short(j.model),
                time.strftime("%Y-%m-%d %H:%M", time.localtime(j.created_at))] for j in jobs],
              empty="no jobs yet: tunerctl train CONFIG", keep=(0,))
        return 0
    if args.action == "show":
        from .report import job_details
        details = job_details(s, args.job_id)
        d = details["job"]
        if args.json:
            print_json({**d, "eval_history": details["evals"], "best_checkpoint": details["paths"]["best_checkpoint"],
                        "paths": details["paths"]})
            return 0
        d.pop("config_json", None)
        for k in ("created_at", "started_at", "finished_at"):
            d[k] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d[k])) if d.get(k) else "-"
        for k, v in d.items():
            console.print(f"[bold]{k:>15}[/] {v}")
        console.print(f"[bold]{'best checkpoint':>15}[/] {details['paths']['best_checkpoint'] or '-'}")
        if details["evals"]:
            keys = sorted({k for e in details["evals"] for k in e["metrics"]} - {"eval_loss", "eval_perplexity"})
            console.print("\n[bold]eval history[/]")
            table(["step", "eval_loss", "perplexity"] + [k.removeprefix("eval_") for k in keys],
                  [[e["step"], f"{e['eval_loss']:.4f}", f"{e['perplexity']:.2f}"]
                   + [f"{e['metrics'].get(k, 0):.4g}" for k in keys] for e in details["evals"]])
        return 0
    if args.action == "watch":
        return watch(s, args.job_id, args, args.from_sequence, follow=not args.no_follow)
    if args.action == "cancel":
        j = s.CancelJob(pb.CancelJobRequest(job_id=args.job_id))
        print_json(_job_dict(j)) if args.json else console.print(
            f"{j.id}: {job_state_name(j.state)}" + (" (cancel requested; it checkpoints and stops)"
                                                    if job_state_name(j.state) == "running" else ""))
        return 0
    if args.action == "resume":
        j = s.ResumeJob(pb.ResumeJobRequest(job_id=args.job_id))
        if args.detach:
            print_json(_job_dict(j)) if args.json else console.print(f"{j.id}: {job_state_name(j.state)}")
            return 0
        return watch(s, j.id, args, from_sequence=j.last_sequence, interactive=True)
    return EXIT_USAGE


def _job_dict(j) -> dict:
    d = as_dict(j, with_defaults=True)
    return d


JOB_HELP = "a job id, a unique prefix of one (as `jobs list` shows), or latest"
SHORT_ID = 15   # the id's time to the second (YYYYMMDD-HHMMSS); longer where jobs share a second


def short_ids(ids: list[str]) -> dict[str, str]:
    """id -> its shortest prefix of at least SHORT_ID characters that no other id starts with
    (docker/git style; every job command accepts it)."""
    def common(a: str, b: str) -> int:
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n
    ordered = sorted(set(ids))
    out = {}
    for i, job_id in enumerate(ordered):
        shared = max([common(job_id, ordered[k]) for k in (i - 1, i + 1) if 0 <= k < len(ordered)], default=0)
        out[job_id] = job_id[:max(SHORT_ID, shared + 1)]
    return out


def _short(model: str) -> str:
    return model if len(model) < 40 else "…" + model[-38:]


def cmd_models(args) -> int:
    s = stub(args)
    if args.action == "list":
        models = s.ListModels(pb.ListModelsRequest()).models
        if args.json:
            return print_json_lines(models)
        table(["model", "backend", "quantization", "dtype", "memory", "adapters", "expires"],
              [[_short(m.model), m.backend, m.quantization, m.dtype,
                f"{_bytes(m.memory_bytes)} (base {_bytes(m.base_bytes)})",
                ", ".join(f"{_short(a.name)} ({_bytes(a.memory_bytes)})" for a in m.attached),
                "never" if not m.expires_at else time.strftime("%H:%M:%S", time.localtime(m.expires_at))]
               for m in models], empty="no models loaded")
        return 0
    if args.action == "load":
        req = pb.LoadModelRequest(model=local_ref(args.model), backend=args.backend, dtype=args.dtype,
                                  quantization=args.quantization, keep_alive_seconds=args.keep_alive,
                                  adapter=local_ref(args.adapter))
        view, m = DownloadView(console), None
        for p in s.LoadModelStream(req):
            show_download(p, view, args)
            m = p.status if p.HasField("status") else m
        print_json(as_dict(m)) if args.json else console.print(
            f"loaded {m.model} on {m.backend} in {m.dtype} ({m.dtype_reason}; {_bytes(m.memory_bytes)}"
            f"{', adapters: ' + ', '.join(m.adapters) if m.adapters else ''})")
        return 0
    if not args.model and not args.adapter:
        raise ValueError("models unload: name a MODEL, an --adapter, or both")
    r = s.UnloadModel(pb.UnloadModelRequest(model=local_ref(args.model), adapter=local_ref(args.adapter),
                                            backend=args.backend,
                                            quantization=args.quantization, dtype=args.dtype))
    print_json({"unloaded": r.unloaded, "count": r.count}) if args.json else console.print(
        f"unloaded {r.count}" if r.unloaded else f"{args.adapter or args.model} was not loaded")
    return 0


def _generation_args(c) -> None:
    """Model and sampling flags of chat and generate; the defaults are the daemon's (backends.generation.Sampling)."""
    c.add_argument("--model", "-m", default="",
                   help="hub id, local path, or job:<id> (default: the --adapter's base model)")
    c.add_argument("--adapter", "-a", default="",
                   help="adapter dir, or job:<id> for that job's latest adapter/checkpoint (default: none, the base model)")
    c.add_argument("--backend", default="auto", help="auto | mlx | torch (default: auto, the host's fastest)")
    c.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: 0, greedy)")
    c.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass (default: 1.0, off)")
    c.add_argument("--top-k", type=int, default=None, help="sample from the K likeliest tokens (default: 0, off)")
    c.add_argument("--min-p", type=float, default=None,
                   help="drop tokens below this share of the likeliest one's probability (default: 0, off)")
    c.add_argument("--repetition-penalty", type=float, default=None,
                   help="penalty for tokens already in the text (default: 1.0, off)")
    c.add_argument("--seed", type=int, default=None, help="sampling seed, for repeatable answers (default: none)")
    c.add_argument("--max-tokens", type=int, default=None, help="new tokens at most (default: 256)")
    c.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop before this text (repeatable; default: none, stop at the end-of-turn token)")


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _sampling(args) -> pb.SamplingParams:
    sp = pb.SamplingParams(stop=args.stop)
    for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed", "max_tokens"):
        v = getattr(args, name)
        if v is not None:
            setattr(sp, name, v)
    return sp


def chat_once(s, args, messages) -> tuple[str, dict]:
    req = pb.ChatRequest(model=local_ref(args.model), adapter=local_ref(args.adapter), backend=args.backend,
                         messages=[pb.ChatMessage(**m) for m in messages], sampling=_sampling(args))
    return print_stream(s.Chat(req), args)


def show_download(message, view: DownloadView, args) -> None:
    """The download progress a stream's message carries (a hub model being fetched): the bar, or a
    JSON line with --json."""
    if message.HasField("download"):
        print_json({"download": as_dict(message.download)}) if args.json else view.update(message.download)


def print_stream(chunks, args) -> tuple[str, dict]:
    """Print a reply as it streams (or JSON lines with --json); (its text, finish and usage)."""
    text, final = [], {}
    view = DownloadView(console)
    for chunk in chunks:
        show_download(chunk, view, args)
        if chunk.delta:
            text.append(chunk.delta)
            if args.json:
                print_json({"delta": chunk.delta})
            else:
                console.print(chunk.delta, end="", markup=False, highlight=False, soft_wrap=True)
        if chunk.finish_reason:
            final = {"finish_reason": chunk.finish_reason,
                     "usage": as_dict(chunk.usage)}
    if args.json:
        print_json(final)
    else:
        console.print()
    return "".join(text), final


def cmd_chat(args) -> int:
    if not args.model and not args.adapter:
        raise ValueError("--model: required (a hub id, a local path, or job:<id>)")
    s = stub(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is not None:
        chat_once(s, args, system + [{"role": "user", "content": args.prompt}])
        return 0
    from .repl import PARAMS, Repl

    def request(messages: list, p: dict) -> pb.ChatRequest:
        sp = pb.SamplingParams(stop=p.get("stop") or [])
        for k in PARAMS:
            if k != "stop" and p.get(k) is not None:
                setattr(sp, k, p[k])
        return pb.ChatRequest(model=local_ref(args.model), adapter=p["adapter"], backend=args.backend,
                              messages=[pb.ChatMessage(**m) for m in messages], sampling=sp)

    params = {k: getattr(args, k) for k in PARAMS}
    home = args.home or default_home()
    return Repl(s, request, params, local_ref(args.adapter), args.system, Path(home) / "chat_history",
                resolve=local_ref).run()


def cmd_generate(args) -> int:
    if not args.model and not args.adapter:
        raise ValueError("--model: required (a hub id, a local path, or job:<id>)")
    req = pb.GenerateRequest(model=local_ref(args.model), adapter=local_ref(args.adapter), backend=args.backend,
                             prompt=args.prompt, sampling=_sampling(args))
    print_stream(stub(args).Generate(req), args)
    return 0


def cmd_daemon(args) -> int:
    t = target(args)
    if args.action == "start":
        ch = open_channel(t)
        if is_healthy(ch):
            print_json({"running": True, "started": False, "address": t.address()}) if args.json else console.print(
                f"tunerd is already running on {t.address()}" + (" (stop it first to change --http)" if args.http else ""))
            return 0
        extra = ((["--http", args.http] if args.http else []) + (["--http-host", args.http_host] if args.http_host else [])
                 + (["--http-no-auth"] if args.http_no_auth else []))
        pid = start_daemon(t, extra=extra)
        print_json({"running": True, "started": True, "pid": pid, "address": t.address()}) if args.json \
            else console.print(f"tunerd started (pid {pid}) on {t.address()}")
        return 0
    if args.action == "stop":
        return _stop_daemon(t, args)
    if args.action == "status":
        ch = open_channel(t)
        if not is_healthy(ch):
            holder = lock_holder(t.home) if t.is_local else None
            if holder:
                print_json({"running": True, "answering": False, "pid": holder.get("pid"),
                            "address": f"unix://{holder.get('socket')}"}) if args.json else err.print(
                    describe_holder(t.home, holder))
                return EXIT_FAILED
            print_json({"running": False, "address": t.address()}) if args.json else console.print(
                f"tunerd is not running ({t.address()})")
            return 3
        from tuner.v1 import tuner_pb2_grpc
        info = tuner_pb2_grpc.TunerStub(ch).GetInfo(pb.GetInfoRequest())
        return _print_info(info, args)
    if args.action == "logs":
        log = t.home / "tunerd.log"
        if not log.exists():
            raise FileNotFoundError(f"no log yet at {log}")
        for line in log_lines(log, args.n, args.follow):
            print_json(log_record(line)) if args.json else print(line, flush=True)
        return 0
    return EXIT_USAGE


def _stop_daemon(t: Target, args) -> int:
    holder = lock_holder(t.home)
    if not holder or not holder.get("pid"):
        if not holder:
            print_json({"running": False, "stopped": False}) if args.json else console.print("tunerd is not running")
            return 0
        raise DaemonUnavailable(f"tunerd is starting for {t.home}; try again in a moment")
    pid = int(holder["pid"])  # the process holding the home's lock, never a stale pid file's
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass

    def holds() -> bool:
        return (lock_holder(t.home) or {}).get("pid") == pid

    deadline = time.time() + 120
    while time.time() < deadline and holds():
        time.sleep(0.2)
    if holds():
        raise DaemonUnavailable(f"tunerd (pid {pid}) did not stop within 120 s")
    print_json({"running": False, "stopped": True, "pid": pid}) if args.json else console.print("tunerd stopped")
    return 0


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) (\w+) ([^:\s]+): (.*)$")


def log_record(line: str) -> dict:
    """A daemon log line as {"time", "level", "logger", "message"}; a continuation line (a
    traceback's) as {"message"}."""
    m = _LOG_LINE.match(line)
    return dict(zip(("time", "level", "logger", "message"), m.groups())) if m else {"message": line}


def log_lines(path: Path, n: int, follow: bool) -> Iterator[str]:
    """The last `n` lines of a log, then (with `follow`) new ones as they are written, across the
    daemon's log rotation, until interrupted."""
    f = open(path, encoding="utf-8", errors="replace")
    try:
        yield from f.read().splitlines()[-n:] if n > 0 else []
        partial = ""
        while follow:
            chunk = f.read()
            if chunk:
                *done, partial = (partial + chunk).split("\n")
                yield from done
                continue
            try:
                rotated = os.stat(path).st_ino != os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                rotated = False
            if rotated:
                f.close()
                f = open(path, encoding="utf-8", errors="replace")
            else:
                time.sleep(0.25)
    finally:
        f.close()


def _print_info(info, args) -> int:
    if args.json:
        print_json(as_dict(info))
        return 0
    console.print(f"tunerd {info.version} ({info.api_version}), pid {info.pid}, up {info.uptime_seconds:.0f}s, "
                  f"home {info.home}")
    console.print(f"memory: {_bytes(info.memory_available_bytes)} free of {_bytes(info.memory_total_bytes)}; "
                  f"default backend: {info.default_backend or '?'}")
    table(["backend", "available", "version", "note"],
          [[b.name, "yes" if b.available else "no", b.version, b.reason] for b in info.backends])
    table(["device", "backend", "detail"], [[d.name, d.backend, d.detail] for d in info.devices])
    return 0


def cmd_service(args) -> int:
    kind = svc.platform_kind(args.platform)
    if args.action == "install":
        if args.dry_run:
            text = svc.render(kind, args.home)
            print_json({"kind": kind, "path": str(svc.service_path(kind)), "content": text}) if args.json \
                else sys.stdout.write(text)
            return 0
        r = svc.install(kind, args.home)
        if args.json:
            print_json(r)
        else:
            console.print(f"wrote {r['path']}")
            if r["started"]:
                console.print("service started")
            else:
                err.print(f"[bold red]error[/]: could not start the service: {r['detail']}", highlight=False)
        return 0 if r["started"] else EXIT_FAILED
    if args.action == "uninstall":
        r = svc.uninstall(kind)
        print_json(r) if args.json else console.print(
            f"removed {r['path']}" if r["removed"] else f"{r['path']} was not installed")
        return 0
    st = svc.status(kind)
    print_json(st) if args.json else console.print(
        f"{st['kind']}: {'installed' if st['installed'] else 'not installed'} at {st['path']}"
        + (f" ({st['manager']})" if st["manager"] else ""))
    return 0


def cmd_data(args) -> int:
    s = stub(args)
    is_cfg = args.source.lower().endswith((".yaml", ".yml"))
    source = local_ref(args.source)  # a hub dataset id stays one
    r = s.InspectData(pb.InspectDataRequest(config_path=source if is_cfg else "",
                                            data_path="" if is_cfg else source, model=local_ref(args.model),
                                            overrides=args.overrides, base_dir=os.getcwd(),
                                            batch_size=args.batch_size, max_seq_length=args.max_seq_length))
    if args.json:
        print_json(as_dict(r, with_defaults=True))
    else:
        from .ui import print_data_report
        print_data_report(r)
    return EXIT_FAILED if r.row_error_count else 0


def cmd_evaluate(args) -> int:
    from .evaluate import run
    return run(stub(args), args)


def cmd_recommend(args) -> int:
    s = stub(args)
    data = args.data
    if data and Path(data).expanduser().exists():
        data = str(Path(data).expanduser().resolve())
    r = s.Recommend(pb.RecommendRequest(model=args.model, train_rows=args.rows, data_path=data,
                                        base_dir=os.getcwd(),
                                        config_path=str(Path(args.config).resolve()) if args.config else ""))
    cfg = as_dict(r.config)
    if args.write:
        Path(args.write).write_text(r.config_yaml, encoding="utf-8")
    if args.json:
        print_json({"config": cfg, "reasons": list(r.reasons), "train_rows": r.train_rows,
                    "tokens_p50": r.tokens_p50, "tokens_p95": r.tokens_p95, "tokens_max": r.tokens_max,
                    **({"written": args.write} if args.write else {})})
        return 0
    for reason in r.reasons:
        console.print(f"• {reason}")
    console.print("\n# suggested config keys")
    for k, v in cfg.items():
        console.print(f"{k}: {json.dumps(v)}")
    if args.write:
        console.print(f"\nwrote {args.write}")
    return 0


def cmd_adapters(args) -> int:
    s = stub(args)
    if args.action == "list":
        ads = s.ListAdapters(pb.ListAdaptersRequest()).adapters
        if args.json:
            return print_json_lines(ads)
        short = short_ids([j.id for j in s.ListJobs(pb.ListJobsRequest()).jobs])
        table(["job", "adapter", "r", "base model", "layouts", "path"],
              [[short.get(a.job_id, a.job_id), a.peft_adapter, a.lora_r, _short(a.base_model), ",".join(a.layouts),
                a.path] for a in ads],
              empty="no adapters yet", keep=(0,))
        return 0
    # paths made absolute here, links not followed: the daemon checks what the path itself is
    adapter = os.path.abspath(args.adapter) if os.path.lexists(args.adapter) else args.adapter
    out_dir = os.path.abspath(args.out_dir)
    if args.action == "export":
        r = s.ExportAdapter(pb.ExportAdapterRequest(adapter=adapter, out_dir=out_dir, layout=args.layout,
                                                    force=args.force))
    else:
        r = s.FuseAdapter(pb.FuseAdapterRequest(adapter=adapter, out_dir=out_dir, model=args.model,
                                                dequantize=args.dequantize, force=args.force))
    print_json({"path": r.path}) if args.json else console.print(f"wrote {r.path}")
    return 0


def cmd_report(args) -> int:
    from .report import write_report
    path = write_report(stub(args), args.job_id, args.output, tuple(args.compare), args.generate, args.max_tokens,
                        force=args.force)
    print_json({"path": str(path.resolve())}) if args.json else console.print(f"wrote {path}")
    return 0


def cmd_version(args) -> int:
    """tunerctl's version, and the daemon's when one answers (none is started for this)."""
    from . import __version__

    t = target(args)
    daemon = None
    with open_channel(t) as ch:
        if is_healthy(ch):
            from tuner.v1 import tuner_pb2_grpc
            info = tuner_pb2_grpc.TunerStub(ch).GetInfo(pb.GetInfoRequest())
            daemon = {"version": info.version, "api_version": info.api_version, "pid": info.pid,
                      "address": t.address()}
    if args.json:
        print_json({"tunerctl": __version__, "tunerd": daemon})
        return 0
    console.print(f"tunerctl {__version__}")
    console.print(f"tunerd {daemon['version']} ({daemon['api_version']}, pid {daemon['pid']}) on {daemon['address']}"
                  if daemon else f"tunerd: not running ({t.address()})")
    return 0


def cmd_info(args) -> int:
    return _print_info(stub(args).GetInfo(pb.GetInfoRequest()), args)


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args, stub, watch)


COMMANDS = {"train": cmd_train, "jobs": cmd_jobs, "models": cmd_models, "chat": cmd_chat, "generate": cmd_generate,
            "daemon": cmd_daemon, "service": cmd_service, "data": cmd_data, "evaluate": cmd_evaluate,
            "recommend": cmd_recommend, "adapters": cmd_adapters, "report": cmd_report, "info": cmd_info, "demo": cmd_demo}


def main(argv=None) -> int:
    args = parse(argv)
    try:
        return cmd_version(args) if args.version else COMMANDS[args.cmd](args)
    except grpc.RpcError as e:
        code = e.code().name if e.code() else "UNKNOWN"
        if args.json:
            print_json({"error": {"code": code, "message": e.details()}})
        else:
            err.print(f"[bold red]error[/] ({code}): {e.details()}", markup=True, highlight=False)
        return EXIT_FAILED
    except (DaemonUnavailable, FileNotFoundError, ValueError) as e:
        if args.json:
            print_json({"error": {"code": type(e).__name__, "message": str(e)}})
        else:
            err.print(f"[bold red]error[/]: {e}", highlight=False)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
