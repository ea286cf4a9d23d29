"""`tunerctl models list|load|unload`, `tunerctl adapters list|export|fuse` and `tunerctl export`."""
from __future__ import annotations

import os
import time

from tuner.connection import local_ref

from ..progress import DownloadView, ExportView
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
        table(["job", "adapter", "r", "base model", "layouts", "path", "exported"],
              [[short.get(a.job_id, a.job_id), a.peft_adapter, a.lora_r, short_model(a.base_model),
                ",".join(a.layouts), a.path, "\n".join(export_line(as_dict(e, True)) for e in a.exports)] for a in ads],
              empty="no adapters yet", keep=(0,))
        return 0
    # paths made absolute here, links not followed: the daemon checks what the path itself is
    adapter = os.path.abspath(args.adapter) if os.path.lexists(args.adapter) else args.adapter
    out_dir = os.path.abspath(args.out_dir)
    if args.action == "export":
        return _export(c, args, adapter, out_dir=out_dir, layout=args.layout, force=args.force)
    r = c.fuse(adapter, out_dir, model=args.model, dequantize=args.dequantize, force=args.force)
    print_json({"path": r.path}) if args.json else console.print(f"wrote {r.path}")
    return 0


def cmd_export(args) -> int:
    """`tunerctl export ADAPTER --format gguf [--quant Q] -o FILE`, --format ollama -o DIR [--name N]
    [--create], --format peft|mlx -o DIR, or --format hub --repo USER/NAME [--private] [--fused] [--gguf QUANT]."""
    adapter = os.path.abspath(args.adapter) if os.path.lexists(args.adapter) else args.adapter
    c = client(args)
    if args.format == "hub":
        if not args.repo:
            raise ValueError("export --format hub: --repo USER/NAME is required")
        return _export(c, args, adapter, format="hub", repo=args.repo, private=args.private, fused=args.fused,
                       gguf_quant=args.gguf, model=args.model)
    if not args.output:
        raise ValueError(f"export --format {args.format}: -o/--output is required")
    out = os.path.abspath(args.output)
    if args.format == "gguf":
        return _export(c, args, adapter, format="gguf", quant=args.quant, out_file=out, model=args.model,
                       force=args.force)
    if args.format == "ollama":
        return _export_ollama(c, args, adapter, out)
    return _export(c, args, adapter, out_dir=out, layout=args.format, force=args.force)


def _export(c, args, adapter: str, **fields) -> int:
    """The Export stream drawn as a progress bar; the last message says what was written."""
    last = _stream(c, args, adapter, **fields)
    r = last.record
    if args.json:
        print_json({"path": last.path, "bytes": r.size_bytes, "format": r.format, "quant": r.quant,
                    "seconds": round(last.elapsed_seconds, 3)})
        return 0
    console.print(f"wrote {last.path} ({human_bytes(r.size_bytes)}{', ' + r.quant if r.quant else ''}, "
                  f"{last.elapsed_seconds:.0f} s)")
    return 0


def _stream(c, args, adapter: str, **fields):
    """Run one Export stream, drawn as a progress bar unless --json; its last message."""
    view, last = None if args.json else ExportView(console), None
    try:
        for last in c.export_stream(adapter, **fields):
            if view:
                view.update(last)
    finally:
        if view:
            view.stop()
    return last


def _export_ollama(c, args, adapter: str, out: str) -> int:
    """The daemon writes DIR (GGUF + Modelfile, tunerd/export/ollama.py); the Modelfile's header
    names the exact `ollama create` line (`# create: `) and any warning (`# warning: `). `--create`
    runs that line here when an `ollama` binary is on PATH."""
    import shlex
    import shutil
    import subprocess

    last = _stream(c, args, adapter, format="ollama", out_dir=out, quant=args.quant, model=args.model,
                   force=args.force, name=args.name)
    path = last.path
    header = [ln.rstrip("\n") for ln in open(os.path.join(path, "Modelfile"), encoding="utf-8") if ln.startswith("# ")]
    line = next((ln[len("# create: "):] for ln in header if ln.startswith("# create: ")), "")
    warnings = [ln[len("# warning: "):] for ln in header if ln.startswith("# warning: ")]
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".gguf"))
    created, rc = False, 0
    if args.create and shutil.which("ollama"):
        rc = subprocess.run(shlex.split(line), stdout=None if not args.json else subprocess.DEVNULL).returncode
        created = rc == 0
    if args.json:
        print_json({"path": path, "bytes": size, "create": line, "created": created, "warnings": warnings,
                    "seconds": round(last.elapsed_seconds, 3)})
        return 0 if rc == 0 else 1
    for w in warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
    console.print(f"wrote {path} (GGUF {human_bytes(size)}, {args.quant}, Modelfile; {last.elapsed_seconds:.0f} s)")
    if args.create and not shutil.which("ollama"):
        console.print("ollama is not on PATH, so the model was not created; install Ollama, then run:")
    elif args.create:
        console.print(f"created the Ollama model ({line})" if created else f"ollama create failed (exit {rc})")
        return 0 if created else 1
    else:
        console.print("create the Ollama model with:")
    console.print(line, markup=False, highlight=False)
    return 0


def export_line(e: dict) -> str:
    """One ExportRecord (as_dict with defaults) for a person: format (layout, quant), where, size, when."""
    what = " ".join(x for x in (e["format"], e["layout"], e["quant"]) if x)
    return (f"{what}: {e['target']} ({human_bytes(int(e['size_bytes']))}, "
            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(e['time']))})")
