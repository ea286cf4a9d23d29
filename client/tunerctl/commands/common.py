"""What the command groups share: reaching the daemon (a tuner.Client), exit codes, short job ids,
sizes, download progress."""
from __future__ import annotations

from tuner import Client
from tuner.connection import Target, target as locate

from ..progress import DownloadView
from ..ui import as_dict, print_json

EXIT_FAILED = 1
EXIT_USAGE = 2

JOB_HELP = "a job id, a unique prefix of one (as `jobs list` shows), or latest"
SHORT_ID = 15   # the id's time to the second (YYYYMMDD-HHMMSS); longer where jobs share a second


def target(args) -> Target:
    return locate(args.home, args.listen, args.token, args.socket, args.tls_ca)


def client(args) -> Client:
    """The daemon the global options name; a local one is started when none answers."""
    return Client.connect(home=args.home, address=args.listen, token=args.token, socket=args.socket,
                          tls_ca=args.tls_ca, autostart=True)


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


def short_model(model: str) -> str:
    return model if len(model) < 40 else "…" + model[-38:]


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def show_download(message, view: DownloadView, args) -> None:
    """The download progress a stream's message carries (a hub model being fetched): the bar, or a
    JSON line with --json."""
    if message.HasField("download"):
        print_json({"download": as_dict(message.download)}) if args.json else view.update(message.download)
