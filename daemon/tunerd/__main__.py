"""`tunerd`: run the MacTuner daemon in the foreground (the CLI and launchd/systemd start it)."""
from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys
from pathlib import Path


def _maybe_preload_blas(argv: list[str]) -> None:
    """On Linux, re-exec with OpenBLAS preloaded so MLX does not use its reference BLAS (~30x
    slower matmuls, DESIGN.md §2). Set TUNERD_NO_BLAS_PRELOAD=1 to skip."""
    from .host import blas_preloaded, optimized_blas_path

    path = optimized_blas_path()
    if not path or blas_preloaded() or os.environ.get("TUNERD_NO_BLAS_PRELOAD"):
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(p for p in (path, env.get("LD_PRELOAD", "")) if p)
    os.execve(sys.executable, [sys.executable, "-m", "tunerd", *argv], env)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from .server import Daemon
    from .paths import default_home
    from .trust import HomeError, prepare_home

    p = argparse.ArgumentParser(prog="tunerd", description="MacTuner daemon: fine-tuning over gRPC")
    p.add_argument("--home", type=Path, default=None, help="state directory (default $TUNER_HOME or ~/.tuner)")
    p.add_argument("--socket", type=Path, default=None, help="Unix socket path (default $TUNER_HOME/tunerd.sock)")
    p.add_argument("--listen", default="", help="also listen on TCP HOST:PORT (bearer token required)")
    p.add_argument("--insecure-tcp", action="store_true", help="no token on TCP (loopback only)")
    p.add_argument("--tls-cert", default="", help="TLS certificate (PEM) for --listen")
    p.add_argument("--tls-key", default="", help="TLS private key (PEM) for --listen")
    p.add_argument("--http", default="", metavar="[HOST:]PORT",
                   help="also serve the OpenAI-compatible HTTP API (/v1) on loopback (off by default)")
    p.add_argument("--http-host", default="", help="serve --http on this address instead (bearer token required)")
    p.add_argument("--http-no-auth", action="store_true",
                   help="no bearer token on --http (loopback only): any local user and any web page can use it")
    p.add_argument("--http-max-body-bytes", type=int, default=4 << 20, metavar="N",
                   help="refuse HTTP request bodies over N bytes with 413 (default 4 MiB)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    if args.http_max_body_bytes < 1:
        p.error("--http-max-body-bytes: must be at least 1")
    _maybe_preload_blas(argv)

    home = prepare_home((args.home or default_home()).expanduser().resolve())  # trusted, or exit
    # A daemon outlives the directory it was started from (a deleted cwd fails every getcwd, which
    # datasets calls to read a data file): paths given here are made absolute, then it works in its home.
    args.socket = args.socket.expanduser().resolve() if args.socket else None
    args.tls_cert, args.tls_key = (str(Path(f).expanduser().resolve()) if f else ""
                                   for f in (args.tls_cert, args.tls_key))
    os.chdir(home)
    os.environ["TUNER_HOME"] = str(home)   # a config's ${TUNER_HOME} is this daemon's home (config/loader.py)
    handlers = [logging.handlers.RotatingFileHandler(home / "tunerd.log", maxBytes=10 << 20, backupCount=3)]
    if sys.stderr.isatty():
        handlers.append(logging.StreamHandler())
    logging.basicConfig(level=args.log_level.upper(), handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("tunerd")
    if sys.platform == "linux":
        from .backends.auto import mlx_blas_library
        from .host import reference_blas_hint
        lib = mlx_blas_library()
        if lib:
            log.info("MLX matmuls use %s", lib)
        else:
            log.warning("%s", reference_blas_hint())
    d = Daemon(home, args.socket, args.listen, args.insecure_tcp, args.tls_cert, args.tls_key,
               http=args.http, http_host=args.http_host, http_no_auth=args.http_no_auth,
               http_max_body=args.http_max_body_bytes)
    try:
        d.start()
    except HomeError as e:
        log.error("%s", e)
        raise
    log.info("tunerd %s ready (pid %d, home %s)", __import__("tunerd").__version__, os.getpid(), home)
    print(f"tunerd ready on unix://{d.socket_path}", flush=True)
    if d.http:
        print(f"OpenAI-compatible API on http://{d.http.host}:{d.http.port}/v1", flush=True)
    d.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
