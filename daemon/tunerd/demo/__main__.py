"""`python -m tunerd.demo DIR`: build the demo bundle in DIR and print its paths as JSON.

`tunerctl demo` runs this locally (the client itself imports no ML packages)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .tiny import build_demo, demo_config_yaml


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tunerd.demo DIR", file=sys.stderr)
        return 2
    out = Path(argv[0]).expanduser().resolve()
    bundle = build_demo(out)
    config = out / "demo.yaml"
    config.write_text(demo_config_yaml(bundle["model"], bundle["train"], bundle["valid"]))
    questions = [r["prompt"] for r in bundle["rows"][:4]]
    answers = [r["completion"] for r in bundle["rows"][:4]]
    print(json.dumps({"model": bundle["model"], "config": str(config), "questions": questions,
                      "answers": answers}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
