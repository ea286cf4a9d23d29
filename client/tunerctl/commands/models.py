"""`tunerctl models list|load|unload`, `tunerctl adapters list|export|fuse` and `tunerctl export`."""
from __future__ import annotations

import os
import time

from tuner.connection import local_ref

from ..progress import DownloadView
from ..ui import as_dict, console, print_json, print_json_lines, table
from .common import client, human_bytes, short_ids, short_model, show_download


def cmd_models(args) -> int:
    c = client(args)
    if args.action == "list":
        models = c.models()
        return print_json_lines(models) if args.json else _print_models(models)
    if args.action == "load":
        view, m = DownloadView(console), None
        for p in c.load_stream(local_ref(args.model), backend=args.backend, dtype=args.dtype,
                               quantization=args.quantization, keep_alive_seconds=args.keep_alive,
                               adapter=local_ref(args.adapter)):
            show_download(p, view, args)
            m = p.status if p.HasField("status") else m
        print_json(as_dict(m)) if args.json else console.print(
            f"loaded {m.model} on {m.backend} in {m.dtype} ({m.dtype_reason}; {human_bytes(m.memory_bytes)}"
            f"{', adapters: ' + ', '.join(m.adapters) if m.adapters else ''})")
        return 0
    if not args.model and not args.adapter:
        raise ValueError("models unload: name a MODEL, an --adapter, or both")
    r = c.unload(local_ref(args.model), adapter=local_ref(args.adapter), backend=args.backend,
                 quantization=args.quantization, dtype=args.dtype)
    print_json({"unloaded": r.unloaded, "count": r.count}) if args.json else console.print(
        f"unloaded {r.count}" if r.unloaded else f"{args.adapter or args.model} was not loaded")
    return 0


def _print_models(models) -> int:
    table(["model", "backend", "quantization", "dtype", "memory", "adapters", "expires"],
          [[short_model(m.model), m.backend, m.quantization, m.dtype,
            f"{human_bytes(m.memory_bytes)} (base {human_bytes(m.base_bytes)})",
            ", ".join(f"{short_model(a.name)} ({human_bytes(a.memory_bytes)})" for a in m.attached),
            "never" if not m.expires_at else time.strftime("%H:%M:%S", time.localtime(m.expires_at))]
           for m in models], empty="no models loaded")
    return 0


def cmd_adapters(args) -> int:
    c = client(args)
    if args.action == "list":
        ads = c.adapters()
        if args.json:
            return print_json_lines(ads)
        short = short_ids([j.id for j in c.jobs()])
        table(["job", "adapter", "r", "base model", "layouts", "path"],
              [[short.get(a.job_id, a.job_id), a.peft_adapter, a.lora_r, short_model(a.base_model),
                ",".join(a.layouts), a.path] for a in ads],
              empty="no adapters yet", keep=(0,))
        return 0
    # paths made absolute here, links not followed: the daemon checks what the path itself is
    adapter = os.path.abspath(args.adapter) if os.path.lexists(args.adapter) else args.adapter
    out_dir = os.path.abspath(args.out_dir)
    if args.action == "export":
        r = c.export(adapter, out_dir, layout=args.layout, force=args.force)
    else:
        r = c.fuse(adapter, out_dir, model=args.model, dequantize=args.dequantize, force=args.force)
    print_json({"path": r.path}) if args.json else console.print(f"wrote {r.path}")
    return 0


def cmd_export(args) -> int:
    """`tunerctl export ADAPTER --format gguf [--quant Q] -o FILE`, `--format ollama -o DIR [--name N]
    [--create]` (or --format peft|mlx -o DIR)."""
    adapter = os.path.abspath(args.adapter) if os.path.lexists(args.adapter) else args.adapter
    out = os.path.abspath(args.output)
    c = client(args)
    if args.format == "gguf":
        started = time.monotonic()
        r = c.export(adapter, "", format="gguf", quant=args.quant, out_file=out, model=args.model, force=args.force)
        size = os.path.getsize(r.path) if os.path.exists(r.path) else 0
        if args.json:
            return print_json({"path": r.path, "bytes": size})
        console.print(f"wrote {r.path} ({human_bytes(size)}, {args.quant}, {time.monotonic() - started:.0f} s)")
        return 0
    if args.format == "ollama":
        return _export_ollama(c, adapter, out, args)
    r = c.export(adapter, out, layout=args.format, force=args.force)
    print_json({"path": r.path}) if args.json else console.print(f"wrote {r.path}")
    return 0


def _export_ollama(c, adapter: str, out: str, args) -> int:
    """The daemon writes DIR (GGUF + Modelfile, tunerd/export/ollama.py); the Modelfile's header
    names the exact `ollama create` line (`# create: `) and any warning (`# warning: `). `--create`
    runs that line here when an `ollama` binary is on PATH."""
    import shlex
    import shutil
    import subprocess

    started = time.monotonic()
    r = c.export(adapter, out, format="ollama", quant=args.quant, model=args.model, force=args.force,
                 name=args.name)
    header = [ln.rstrip("\n") for ln in open(os.path.join(r.path, "Modelfile"), encoding="utf-8") if ln.startswith("# ")]
    line = next((ln[len("# create: "):] for ln in header if ln.startswith("# create: ")), "")
    warnings = [ln[len("# warning: "):] for ln in header if ln.startswith("# warning: ")]
    size = sum(os.path.getsize(os.path.join(r.path, f)) for f in os.listdir(r.path) if f.endswith(".gguf"))
    created, rc = False, 0
    if args.create and shutil.which("ollama"):
        rc = subprocess.run(shlex.split(line), stdout=None if not args.json else subprocess.DEVNULL).returncode
        created = rc == 0
    if args.json:
        print_json({"path": r.path, "bytes": size, "create": line, "created": created, "warnings": warnings})
        return 0 if rc == 0 else 1
    for w in warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
    console.print(f"wrote {r.path} (GGUF {human_bytes(size)}, {args.quant}, Modelfile; "
                  f"{time.monotonic() - started:.0f} s)")
    if args.create and not shutil.which("ollama"):
        console.print("ollama is not on PATH, so the model was not created; install Ollama, then run:")
    elif args.create:
        console.print(f"created the Ollama model ({line})" if created else f"ollama create failed (exit {rc})")
        return 0 if created else 1
    else:
        console.print("create the Ollama model with:")
    console.print(line, markup=False, highlight=False)
    return 0
