"""tunerctl: every command is a call to the daemon's public gRPC API (proto/tuner/v1), made
through the same `tuner.Client` other apps use. This file is the parser and the dispatch; the
commands are in commands/ by group (jobs, models, chat, data, daemon)."""
from __future__ import annotations

import argparse
from pathlib import Path

from tuner import DaemonUnavailable, TunerError
from tuner.connection import default_home

from .commands.chat import cmd_chat, cmd_demo, cmd_generate
from .commands.common import EXIT_FAILED, EXIT_USAGE, JOB_HELP, SHORT_ID  # noqa: F401 (exit codes, id length)
from .commands.daemon import cmd_daemon, cmd_info, cmd_service, cmd_version
from .commands.data import cmd_data, cmd_evaluate, cmd_recommend
from .commands.jobs import cmd_jobs, cmd_report, cmd_train
from .commands.models import cmd_adapters, cmd_export, cmd_models
from .ui import err, print_json


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

    ex = cmd(sub, "export", "write a trained adapter out: fused into its base as one GGUF file (llama.cpp, "
                            "Ollama, LM Studio), the adapter in peft or mlx layout, or a Hub repo with a model card")
    ex.add_argument("adapter", help=adapter_help)
    ex.add_argument("--format", choices=["gguf", "ollama", "peft", "mlx", "hub"], default="gguf",
                    help="ollama: a folder with the GGUF and a Modelfile (TEMPLATE, stops, SYSTEM)")
    ex.add_argument("--quant", default="f16", help="gguf/ollama: f16 (default), bf16 or q8_0; for q4_k_m and other "
                                                  "k-quants run llama-quantize (or ollama create --quantize) on the f16 file")
    ex.add_argument("-o", "--output", default="", help="gguf: the .gguf file to write; ollama/peft/mlx: a new or "
                                                       "empty folder")
    ex.add_argument("--name", default="", help="ollama: the model name (default: the folder's name)")
    ex.add_argument("--create", action="store_true", help="ollama: run `ollama create` when ollama is on PATH")
    ex.add_argument("--model", default="", help="gguf: base model (default: the adapter's)")
    ex.add_argument("--force", action="store_true", help="gguf: replace the file; peft/mlx: " + force_help)
    ex.add_argument("--repo", default="", metavar="USER/NAME", help="hub: the Hub repo to push to (needs the "
                                                                    "network and a token: hf auth login)")
    ex.add_argument("--private", action="store_true", help="hub: create the repo private")
    ex.add_argument("--fused", action="store_true", help="hub: push the fused model instead of the adapter")
    ex.add_argument("--gguf", default="", metavar="QUANT", help="hub: also push a GGUF (f16, bf16 or q8_0)")

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


COMMANDS = {"train": cmd_train, "jobs": cmd_jobs, "models": cmd_models, "chat": cmd_chat, "generate": cmd_generate,
            "daemon": cmd_daemon, "service": cmd_service, "data": cmd_data, "evaluate": cmd_evaluate,
            "recommend": cmd_recommend, "adapters": cmd_adapters, "export": cmd_export, "report": cmd_report, "info": cmd_info, "demo": cmd_demo}


def main(argv=None) -> int:
    args = parse(argv)
    try:
        return cmd_version(args) if args.version else COMMANDS[args.cmd](args)
    except (DaemonUnavailable, FileNotFoundError, ValueError) as e:
        if args.json:
            print_json({"error": {"code": type(e).__name__, "message": str(e)}})
        else:
            err.print(f"[bold red]error[/]: {e}", highlight=False)
        return EXIT_FAILED
    except TunerError as e:   # the daemon's answer: its status code and message
        code = e.code.name
        if args.json:
            print_json({"error": {"code": code, "message": e.details}})
        else:
            err.print(f"[bold red]error[/] ({code}): {e.details}", markup=True, highlight=False)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
