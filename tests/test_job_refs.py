"""Job references through the CLI: the short ids `jobs list` and `adapters list` show on an
80-column terminal, unique prefixes, `latest` and `job:...`, an ambiguous prefix and an unknown
one. A real Core and gRPC servicer in-process (fake trainer) behind a real Unix socket; the CLI's
own main()."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tuner.v1 import tuner_pb2_grpc

from jobs_fakes import FakeTrainer, job_doc, wait_until
from tunerctl import cli, ui
from tunerd.api.servicer import TunerServicer
from tunerd.core import Core
from tunerd.jobs import refs
from tunerd.jobs.store import SUCCEEDED

JOBS = 3


@pytest.fixture(scope="module")
def served():
    """A home with three finished jobs (submitted in one burst: their ids share a long prefix)
    and a servicer answering on its socket."""
    home = Path(tempfile.mkdtemp(prefix="tn-"))   # Unix socket paths are short
    os.chmod(home, 0o700)
    (home / "model").mkdir()
    core = Core(home, run_training=FakeTrainer())
    core.start()
    server = grpc.server(futures.ThreadPoolExecutor(8))
    tuner_pb2_grpc.add_TunerServicer_to_server(TunerServicer(core), server)
    checker = health.HealthServicer()
    for name in ("", "tuner.v1.Tuner"):
        checker.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(f"unix://{home / 'tunerd.sock'}")
    server.start()
    ids = [core.submit(doc=job_doc(home / "model"), base_dir=str(home)).id for _ in range(JOBS)]
    wait_until(lambda: all(core.get_job(i).state == SUCCEEDED for i in ids), what="jobs finished")
    yield home, core, ids
    server.stop(0)
    core.shutdown(5)
    shutil.rmtree(home, ignore_errors=True)


def tunerctl(capsys, home: Path, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["--home", str(home), *args])
    out, err = capsys.readouterr()
    return code, out, err


def column(out: str) -> list[str]:
    """The first column of a table's rows (a row's wrapped cells continue on indented lines)."""
    return [line.split()[0] for line in out.splitlines()[1:] if line[:1].strip()]


@pytest.mark.parametrize("listing", ["jobs", "adapters"])
def test_lists_show_whole_short_ids_on_80_columns(served, capsys, monkeypatch, listing):
    home, _, ids = served
    monkeypatch.setattr(ui.console, "_width", 80)
    code, out, _ = tunerctl(capsys, home, listing, "list")
    assert code == 0 and max(map(len, out.splitlines())) <= 80
    shown = column(out)
    assert len(shown) == JOBS and len(set(shown)) == JOBS
    for short in shown:
        assert len(short) >= cli.SHORT_ID and len([i for i in ids if i.startswith(short)]) == 1


def test_a_shown_short_id_is_accepted_by_job_commands(served, capsys, monkeypatch):
    home, _, ids = served
    monkeypatch.setattr(ui.console, "_width", 80)
    shown = column(tunerctl(capsys, home, "jobs", "list")[1])
    for short in shown:
        code, out, _ = tunerctl(capsys, home, "jobs", "show", short, "--json")
        assert code == 0 and json.loads(out)["id"].startswith(short)
    code, out, _ = tunerctl(capsys, home, "jobs", "watch", shown[0], "--no-follow", "--json")
    assert code == 0 and {json.loads(line)["job_id"] for line in out.splitlines()} == \
        {i for i in ids if i.startswith(shown[0])}


def test_latest_names_the_newest_job(served, capsys, tmp_path):
    home, core, ids = served
    code, out, _ = tunerctl(capsys, home, "jobs", "show", "latest", "--json")
    assert code == 0 and json.loads(out)["id"] == ids[-1]
    code, out, _ = tunerctl(capsys, home, "adapters", "export", "job:latest", str(tmp_path / "out"), "--json")
    assert code == 0 and (tmp_path / "out" / "adapter_model.safetensors").exists()
    t = refs.target(core.store, adapter="job:latest")     # what chat and models load resolve it to
    assert (t.adapter_name, t.model) == (f"job:{ids[-1]}", core.get_job(ids[-1]).model)


def test_an_ambiguous_prefix_is_invalid_argument_naming_the_candidates(served, capsys):
    home, _, ids = served
    prefix = os.path.commonprefix(ids)
    code, _, err = tunerctl(capsys, home, "jobs", "show", prefix)
    assert code == cli.EXIT_FAILED and "INVALID_ARGUMENT" in err and "ambiguous" in err
    assert all(i in err.replace("\n", "") for i in ids)
    code, _, err = tunerctl(capsys, home, "adapters", "export", f"job:{prefix}", "/tmp/never")
    assert code == cli.EXIT_FAILED and "INVALID_ARGUMENT" in err


def test_an_unknown_job_is_not_found(served, capsys):
    home, _, _ = served
    for ref in ("1999", "job:1999"):
        code, _, err = tunerctl(capsys, home, "jobs", "cancel", ref)
        assert code == cli.EXIT_FAILED and "NOT_FOUND" in err
    code, _, err = tunerctl(capsys, home, "adapters", "export", "job:1999", "/tmp/never")
    assert code == cli.EXIT_FAILED and "NOT_FOUND" in err
