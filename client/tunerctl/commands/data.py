"""`tunerctl data inspect`, `tunerctl evaluate` and `tunerctl recommend`."""
from __future__ import annotations

import json
import os
from pathlib import Path

from tuner.connection import local_ref

from ..ui import as_dict, console, print_json
from .common import EXIT_FAILED, client


def cmd_data(args) -> int:
    c = client(args)
    is_cfg = args.source.lower().endswith((".yaml", ".yml"))
    source = local_ref(args.source)  # a hub dataset id stays one
    r = c.inspect_data(config_path=source if is_cfg else "", data_path="" if is_cfg else source,
                       model=local_ref(args.model), overrides=args.overrides, base_dir=os.getcwd(),
                       batch_size=args.batch_size, max_seq_length=args.max_seq_length)
    if args.json:
        print_json(as_dict(r, with_defaults=True))
    else:
        from ..ui import print_data_report
        print_data_report(r)
    return EXIT_FAILED if r.row_error_count else 0


def cmd_evaluate(args) -> int:
    from ..evaluate import run
    return run(client(args), args)


def cmd_recommend(args) -> int:
    c = client(args)
    data = args.data
    if data and Path(data).expanduser().exists():
        data = str(Path(data).expanduser().resolve())
    r = c.recommend(model=args.model, train_rows=args.rows, data_path=data, base_dir=os.getcwd(),
                    config_path=str(Path(args.config).resolve()) if args.config else "")
    cfg = as_dict(r.config)
    if args.write:
        Path(args.write).write_text(r.config_yaml, encoding="utf-8")
    if args.json:
        print_json({"config": cfg, "reasons": list(r.reasons), "train_rows": r.train_rows,
                    "tokens_p50": r.tokens_p50, "tokens_p95": r.tokens_p95, "tokens_max": r.tokens_max,
                    "warnings": list(r.warnings),
                    **({"written": args.write} if args.write else {})})
        return 0
    for reason in r.reasons:
        console.print(f"• {reason}")
    for w in r.warnings:
        console.print(f"[bold yellow]warning[/]: {w}")
    console.print("\n# suggested config keys")
    for k, v in cfg.items():
        console.print(f"{k}: {json.dumps(v)}")
    if args.write:
        console.print(f"\nwrote {args.write}")
    return 0
