"""Generate the Python stubs for proto/ into client/ — the one command (`make proto`).

    python proto/generate.py            write client/tuner/v1/*_pb2*.py(i)
    python proto/generate.py --check    exit 1 if the committed stubs are stale

Compiling with -Iproto from proto/tuner/v1/*.proto makes the generated imports come out as
`from tuner.v1 import ...` without patching. Generated files are never edited by hand.
"""
from __future__ import annotations

import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "client"


def protos() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_DIR)) for p in protos()]
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}", f"--pyi_out={out_dir}", *files]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in out_dir.rglob("*_pb2*") if p.is_file())


def main(argv: list[str]) -> int:
    if "--check" in argv:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = generate(Path(tmp))
            stale = [f.relative_to(tmp) for f in fresh
                     if not (OUT_DIR / f.relative_to(tmp)).exists()
                     or not filecmp.cmp(f, OUT_DIR / f.relative_to(tmp), shallow=False)]
        if stale:
            print("stale generated stubs (run `make proto`): " + ", ".join(map(str, stale)))
            return 1
        print("generated stubs are up to date")
        return 0
    for f in generate(OUT_DIR):
        print(f"wrote {f.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
