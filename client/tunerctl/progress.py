"""Live views of the daemon's streams: a training job's events (progress bar + event lines) and a
hub model's download (a bar on a terminal, a line per file otherwise)."""
from __future__ import annotations

from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from tuner.v1 import tuner_pb2 as pb

_STATES = {pb.QUEUED: "queued", pb.RUNNING: "running", pb.SUCCEEDED: "succeeded", pb.FAILED: "failed",
           pb.CANCELLED: "cancelled", pb.INTERRUPTED: "interrupted", pb.JOB_STATE_UNSPECIFIED: "unknown"}


def job_state_name(state: int) -> str:
    return _STATES.get(state, "unknown")


def task_metrics(metrics, prefix: str = "") -> str:
    """A preference task's rewards (task dpo / orpo: TRL's names) in a few words; "" for other tasks."""
    m = {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}
    if "rewards/accuracies" not in m:
        return ""
    return (f"reward accuracy {m['rewards/accuracies']:.2f} margin {m.get('rewards/margins', 0.0):.3f} "
            f"(chosen {m.get('rewards/chosen', 0.0):.3f}, rejected {m.get('rewards/rejected', 0.0):.3f})")


def _eta(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class DownloadView:
    """`DownloadProgress` messages (a job's, a chat's or `models load`'s) as one bar over all files."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = None
        self.task = None
        self.file = ""

    def update(self, d: pb.DownloadProgress) -> None:
        if d.done:
            self.stop()
            rate = f" ({decimal(int(d.bytes_per_second))}/s)" if d.bytes_per_second else ""
            if d.file.startswith("converted"):   # a GGUF model, converted into the daemon's model cache
                self.console.print(f"{d.model}: {d.file} in {d.elapsed_seconds:.1f}s", highlight=False)
                return
            self.console.print(f"downloaded {d.model}: {d.files_total} files, {decimal(d.bytes_total)} in "
                               f"{d.elapsed_seconds:.1f}s{rate}", highlight=False)
            return
        what = f"{d.file} ({d.files_done + 1}/{d.files_total})" if d.file else f"{d.files_total} files"
        if not self.console.is_terminal:
            if d.file.startswith("converting") and d.file != self.file:   # a GGUF model: one step
                self.console.print(f"{d.model}: {d.file}, {decimal(d.file_bytes_total)}", highlight=False)
            elif d.file and d.file != self.file:
                self.console.print(f"downloading {d.model}: {what}, {decimal(d.file_bytes_total)}; "
                                   f"{decimal(d.bytes_done)} of {decimal(d.bytes_total)} so far", highlight=False)
            self.file = d.file
            return
        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]download"), TextColumn("{task.description}"), BarColumn(),
                TextColumn("{task.fields[size]}"), TextColumn("{task.fields[rate]}"),
                TextColumn("ETA {task.fields[eta]}"), console=self.console, transient=False)
            self.progress.start()
            self.task = self.progress.add_task("", total=d.bytes_total or None, size="", rate="", eta="-")
        self.progress.update(self.task, description=f"{d.model} {what}", completed=d.bytes_done,
                             total=d.bytes_total or None, size=f"{decimal(d.bytes_done)}/{decimal(d.bytes_total)}",
                             rate=f"{decimal(int(d.bytes_per_second))}/s", eta=_eta(d.eta_seconds))

    def stop(self) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None


class ExportView:
    """`ExportProgress` messages (`tunerctl export`, `adapters export`) as a bar per stage on a
    terminal (bytes and ETA where the stage counts them), else a line per stage."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = None
        self.task = None
        self.stage = ""
        self.total = 1

    def update(self, p: pb.ExportProgress) -> None:
        if p.done:
            self.stop()
            return
        new = p.stage != self.stage
        self.stage = p.stage
        if not self.console.is_terminal:
            if new:
                self.console.print(f"{p.stage}: {p.message}" + (f" ({decimal(p.bytes_total)})" if p.bytes_total else ""),
                                   highlight=False)
            return
        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]{task.fields[stage]}"), BarColumn(), TextColumn("{task.fields[size]}"),
                TextColumn("ETA {task.fields[eta]}"), TextColumn("[dim]{task.description}"),
                console=self.console, transient=False)
            self.progress.start()
            self.task = self.progress.add_task("", total=None, stage="", size="", eta="-")
        elif new:   # a new stage: a new bar under the finished one
            self.progress.update(self.task, total=self.total, completed=self.total)
            self.task = self.progress.add_task("", total=None, stage="", size="", eta="-")
        self.total = p.bytes_total or 1
        self.progress.update(self.task, description=p.message[:60], stage=p.stage, completed=p.bytes_done,
                             total=p.bytes_total or None,
                             size=f"{decimal(p.bytes_done)}/{decimal(p.bytes_total)}" if p.bytes_total else "",
                             eta=_eta(p.eta_seconds))

    def stop(self) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None


class JobView:
    def __init__(self, console: Console):
        self.console = console
        self.progress = None
        self.task = None
        self.live = console.is_terminal
        self.download = DownloadView(console)

    def _line(self, text: str) -> None:
        (self.progress.console if self.progress else self.console).print(text, highlight=False)

    def _start_bar(self, total: int) -> None:
        if not self.live or self.progress:
            return
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss [cyan]{task.fields[loss]}"), TextColumn("lr {task.fields[lr]}"),
            TextColumn("{task.fields[tps]}"), TextColumn("{task.fields[rewards]}"), TextColumn("ETA {task.fields[eta]}"),
            TimeElapsedColumn(), console=self.console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task("train", total=total or None, loss="-", lr="-", tps="-", eta="-", rewards="")

    def update(self, e: pb.JobEvent) -> None:
        kind = e.WhichOneof("event")
        if kind != "download":
            self.download.stop()
        if kind == "state_changed":
            self._line(f"[dim]#{e.sequence}[/] state → [bold]{job_state_name(e.state_changed.state)}[/]"
                       + (f" ({e.state_changed.reason})" if e.state_changed.reason else ""))
        elif kind == "started":
            s = e.started
            self._line(f"[dim]#{e.sequence}[/] {s.model} on [bold]{s.backend}[/] ({s.device}): "
                       f"{s.trainable_params:,} of {s.total_params:,} parameters trainable "
                       f"({s.trainable_percent:.3f}%), {s.train_rows} train / {s.eval_rows} eval rows, "
                       f"{s.total_steps} steps" + (f", resumed at step {s.resumed_from_step}"
                                                   if s.resumed_from_step else ""))
            if s.dtype:
                self._line(f"[dim]#{e.sequence}[/] dtype [bold]{s.dtype}[/] ({s.dtype_reason}); packing "
                           f"[bold]{'on' if s.packing else 'off'}[/] ({s.packing_reason}); estimated peak "
                           f"{s.estimated_peak_memory_bytes / 2**30:.2f} GiB; device peak {s.peak_tflops:.2f} TFLOP/s")
            if s.world_size > 1:
                self._line(f"[dim]#{e.sequence}[/] distributed: [bold]{s.world_size}[/] ranks "
                           f"({s.distributed_backend}), global batch {s.global_batch_size} rows per step")
            for w in s.warnings:
                self._line(f"[dim]#{e.sequence}[/] [bold yellow]warning[/]: {w}")
            self._start_bar(s.total_steps)
            if self.progress and s.resumed_from_step:
                self.progress.update(self.task, completed=s.resumed_from_step)
        elif kind == "step":
            s = e.step
            rewards = task_metrics(s.metrics)
            if self.progress:
                self.progress.update(self.task, completed=s.step, total=s.total_steps or None,
                                     loss=f"{s.loss:.4f}", lr=f"{s.learning_rate:.2e}",
                                     tps=f"{s.tokens_per_second:,.0f} tok/s, MFU {100 * s.mfu:.1f}%",
                                     eta=_eta(s.eta_seconds), rewards=rewards.split(" (")[0])
            else:
                self._line(f"step {s.step}/{s.total_steps} loss {s.loss:.4f} lr {s.learning_rate:.2e} "
                           f"grad_norm {s.grad_norm:.3f} {s.tokens_per_second:,.0f} tok/s "
                           f"{s.tflops:.3f} TFLOP/s MFU {100 * s.mfu:.1f}% "
                           f"peak {s.peak_memory_bytes / 2**20:.0f} MiB ETA {_eta(s.eta_seconds)}"
                           + (f" {rewards}" if rewards else ""))
        elif kind == "eval":
            v = e.eval
            retain = v.metrics.get("retain_loss")
            self._line(f"[dim]#{e.sequence}[/] step {v.step} eval_loss [bold]{v.eval_loss:.4f}[/] "
                       f"perplexity {v.perplexity:.2f}" + (f"; retain_loss {retain:.4f}" if retain is not None else "")
                       + (f", retain answers changed {v.metrics['retain_changed']:.0f}"
                          if "retain_changed" in v.metrics else "")
                       + (f"; {task_metrics(v.metrics, 'eval_')}" if task_metrics(v.metrics, "eval_") else ""))
        elif kind == "checkpoint":
            self._line(f"[dim]#{e.sequence} checkpoint {e.checkpoint.path}"
                       + (" (best)" if e.checkpoint.is_best else "") + "[/]")
        elif kind == "download":
            self.download.update(e.download)
        elif kind == "log":
            style = "yellow" if e.log.level == "warning" else "dim"
            self._line(f"[{style}]{e.log.message}[/]")
        elif kind == "finished":
            f = e.finished
            self._line(f"[green]finished[/]: {f.steps} steps, final loss {f.final_loss:.4f}"
                       + (" (stopped early)" if f.stopped_early else "") + f"\nadapter: {f.adapter_path}")
        elif kind == "failed":
            self._line(f"[bold red]failed[/] at step {e.failed.step}: {e.failed.reason}")
        elif kind == "cancelled":
            self._line(f"[yellow]stopped[/] at step {e.cancelled.step}"
                       + (f"; checkpoint {e.cancelled.checkpoint}" if e.cancelled.checkpoint else ""))

    def stop(self) -> None:
        self.download.stop()
        if self.progress:
            self.progress.stop()
            self.progress = None

    def summary(self, job: pb.Job) -> None:
        state = job_state_name(job.state)
        if state == "succeeded":
            self.console.print(f"job {job.id} [green]succeeded[/]; chat with it: "
                               f"tunerctl chat --adapter job:{job.id}")
        elif state == "failed":
            self.console.print(f"job {job.id} [bold red]failed[/]: {job.error}")
        else:
            self.console.print(f"job {job.id} {state}" + (f": {job.error}" if job.error else ""))
