"""`tunerctl chat` (one-shot with -p, else the REPL), `tunerctl generate` and `tunerctl demo`."""
from __future__ import annotations

from pathlib import Path

from tuner import Client
from tuner.connection import default_home, local_ref
from tuner.v1 import tuner_pb2 as pb

from ..progress import DownloadView
from ..ui import as_dict, console, print_json
from .common import client, show_download

SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed", "max_tokens")


def sampling(args) -> pb.SamplingParams:
    sp = pb.SamplingParams(stop=args.stop)
    for name in SAMPLING:
        v = getattr(args, name)
        if v is not None:
            setattr(sp, name, v)
    return sp


def chat_once(c: Client, args, messages) -> tuple[str, dict]:
    return print_stream(c.chat(messages, model=local_ref(args.model), adapter=local_ref(args.adapter),
                               backend=args.backend, sampling=sampling(args)), args)


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
    c = client(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is not None:
        chat_once(c, args, system + [{"role": "user", "content": args.prompt}])
        return 0
    from ..repl import PARAMS, Repl, Target

    def ask(messages: list, p: dict):
        sp = pb.SamplingParams(stop=p.get("stop") or [])
        for k in PARAMS:
            if k != "stop" and p.get(k) is not None:
                setattr(sp, k, p[k])
        return c.chat(messages, model=p["model"], adapter=p["adapter"], backend=args.backend, sampling=sp)

    def check(model: str, adapter: str) -> Target:
        """The daemon resolves (and makes resident, as the next answer would) the model with this
        adapter: an unknown job or folder is its NOT_FOUND / INVALID_ARGUMENT, said when typed."""
        st = c.load(model, backend=args.backend or "auto", adapter=adapter)
        return Target(st.model, st.context_length)

    params = {k: getattr(args, k) for k in PARAMS}
    home = args.home or default_home()
    return Repl(ask, params, local_ref(args.adapter), args.system, Path(home) / "chat_history",
                resolve=local_ref, model=local_ref(args.model), check=check).run()


def cmd_generate(args) -> int:
    if not args.model and not args.adapter:
        raise ValueError("--model: required (a hub id, a local path, or job:<id>)")
    print_stream(client(args).generate(args.prompt, model=local_ref(args.model), adapter=local_ref(args.adapter),
                                       backend=args.backend, sampling=sampling(args)), args)
    return 0


def cmd_demo(args) -> int:
    from ..demo import run_demo
    from .jobs import watch
    return run_demo(args, client, watch)
