"""Issue 16, findings 1-3 (and the README's `adapters fuse ID DIR`), through the real daemon and CLI:
MacTuner never deletes or overwrites what it did not write. Fuse and export refuse a folder holding
other files (unless --force, which still removes nothing), the home, its parents, runs/ and any
job's folder; jobs own their output folders; writes never follow a planted link; `report -o` does
not write through a link nor over a file that is not a report."""
from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import grpc
import pytest
from tuner.v1 import tuner_pb2 as pb

from daemon_utils import cli, json_lines, write_config

pytestmark = pytest.mark.slow


def error_of(p) -> dict:
    """The {"code", "message"} a failed `tunerctl ... --json` printed."""
    assert p.returncode != 0, p.stdout + p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    return json_lines(p.stdout)[-1]["error"]


def tree(folder: Path) -> dict:
    """Every file under `folder` (links as links) -> its bytes' digest."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            p = Path(root, name)
            key = str(p.relative_to(folder))
            out[key] = ("link:" + os.readlink(p)) if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def a_project(folder: Path) -> Path:
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "main.py").write_text("print('my work')\n")
    (folder / "README").write_text("my project\n")
    return folder


@pytest.fixture(scope="module")
def job(daemon, demo_bundle, tmp_path_factory) -> str:
    """One finished job (torch, 4 steps, checkpoints at 2 and 4)."""
    cfg = write_config(tmp_path_factory.mktemp("cfg") / "c.yaml", demo_bundle, backend="torch", max_steps=4,
                       save_steps=2, eval_steps=100000, logging_steps=1)
    return json_lines(cli(daemon.home, "train", str(cfg), "--json", check=True).stdout)[0]["job_id"]


# -- finding 1: fuse deleted the folder it wrote to -----------------------------------------------------
def test_fuse_into_a_users_project_is_refused_and_keeps_it(daemon, job, tmp_path):
    proj = a_project(tmp_path / "proj")
    before = tree(proj)
    err = error_of(cli(daemon.home, "adapters", "fuse", f"job:{job}", str(proj), "--json"))
    assert err["code"] == "INVALID_ARGUMENT"
    assert "MacTuner did not write" in err["message"] and "src/" in err["message"] and "--force" in err["message"]
    assert tree(proj) == before

    # with --force: the model is written beside the user's files, which stay as they were
    cli(daemon.home, "adapters", "fuse", f"job:{job}", str(proj), "--force", check=True)
    after = tree(proj)
    assert {k: after[k] for k in before} == before and "config.json" in after


def test_fuse_bare_id_writes_a_new_folder_and_refuses_over_a_users_file_in_it(daemon, job, tmp_path):
    """`tunerctl adapters fuse ID DIR` (README): a bare id; fusing again into our own folder replaces
    our files and keeps a file the user added; a user's file named as one of ours needs --force."""
    out = tmp_path / "fused"
    p = cli(daemon.home, "adapters", "fuse", job[:15], str(out), "--json", check=True)   # a unique prefix
    assert json_lines(p.stdout)[-1]["path"] == str(out)
    marker = json.loads((out / ".tunerd-output.json").read_text())
    assert marker["kind"] == "fused model" and "config.json" in marker["files"]
    (out / "notes.txt").write_text("mine\n")
    cli(daemon.home, "adapters", "fuse", "latest", str(out), check=True)
    assert (out / "notes.txt").read_text() == "mine\n" and (out / "config.json").exists()
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")] and not [
        n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_fuse_and_export_into_the_home_runs_or_a_jobs_folder_are_refused_even_with_force(daemon, job):
    home = daemon.home
    kept = {p.name for p in home.iterdir()}
    assert {"jobs.db", "runs", "tunerd.sock"} <= kept
    runs_before = tree(home / "runs" / job)
    for target, why in [(home, "daemon's home"), (home.parent, "holds the daemon's home"),
                        (home / "runs", "all jobs' outputs"), (home / "runs" / job, f"job {job}'s output folder"),
                        (home / "runs" / job / "fused", f"inside job {job}'s output folder")]:
        for action in (["fuse"], ["export"]):
            err = error_of(cli(home, "adapters", *action, f"job:{job}", str(target), "--force", "--json"))
            assert err["code"] == "INVALID_ARGUMENT" and why in err["message"], (target, err)
    assert {p.name for p in home.iterdir()} >= kept
    assert tree(home / "runs" / job) == runs_before
    listed = json_lines(cli(home, "jobs", "list", "--json", check=True).stdout)
    assert job in [j["id"] for j in listed]    # the same daemon, its database intact


# -- finding 2: output folders are owned by a job ----------------------------------------------------------
def test_a_jobs_output_dir_is_its_own(daemon, demo_bundle, tmp_path):
    """Two jobs with one output_dir: the second is refused naming the first (and so are the home,
    runs/, a folder inside or holding the first's, and a folder holding a user's files); the
    first's adapter and checkpoints are untouched."""
    out = tmp_path / "runs" / "a"
    cfg = write_config(tmp_path / "a.yaml", demo_bundle, backend="torch", max_steps=4, save_steps=2,
                       eval_steps=100000, output_dir=str(out), save_total_limit=1)
    first = json_lines(cli(daemon.home, "train", str(cfg), "--json", check=True).stdout)[0]["job_id"]
    assert json.loads((out / ".tunerd-output.json").read_text())["job"] == first
    before, proj = tree(out), a_project(tmp_path / "proj")
    proj_before = tree(proj)
    count = len(json_lines(cli(daemon.home, "jobs", "list", "--json", check=True).stdout))
    for where, why in [(out, f"is job {first}'s output folder"), (out / "sub", f"inside job {first}'s"),
                       (tmp_path / "runs", f"holds job {first}'s"), (daemon.home, "daemon's home"),
                       (daemon.home / "runs", "all jobs' outputs"), (proj, "MacTuner did not write")]:
        p = cli(daemon.home, "train", str(cfg), "--set", f"output_dir={where}", "--detach", "--json")
        err = error_of(p)
        assert err["code"] == "INVALID_ARGUMENT" and "output_dir" in err["message"] and why in err["message"], err
    assert tree(out) == before and tree(proj) == proj_before
    assert len(json_lines(cli(daemon.home, "jobs", "list", "--json", check=True).stdout)) == count  # none queued


def test_rotation_deletes_only_the_jobs_own_checkpoints(tmp_path):
    """A checkpoint folder the job did not write (another job's, or a user's copy) is never rotated out."""
    from tunerd.training.checkpoints import STATE_FILE, TrainerState, rotate, save_checkpoint

    def save(step, job):
        return save_checkpoint(tmp_path, TrainerState(global_step=step), lambda d: (d / "w").write_text(str(step)),
                               job=job)
    foreign = tmp_path / "checkpoint-1"
    foreign.mkdir()
    (foreign / STATE_FILE).write_text(TrainerState(global_step=1).to_json())
    save(2, "other-job")
    for step in (3, 4, 5):
        save(step, "this-job")
    removed = rotate(tmp_path, 1, job="this-job")
    assert sorted(p.name for p in removed) == ["checkpoint-3", "checkpoint-4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-2", "checkpoint-5"]


def test_rewriting_our_own_folder_replaces_only_our_entries(tmp_path):
    """files.write_output_dir over a folder of ours: entries we wrote before and not now go, a
    file becomes a folder (and back), a user's extra file stays; a user's folder named as one of
    ours is never replaced, even with force."""
    from tunerd.files import MARKER, OutputRefused, write_output_dir

    out = tmp_path / "out"

    def entries(*names):
        def fill(tmp):
            for n in names:
                (tmp / n.rstrip("/")).mkdir() if n.endswith("/") else (tmp / n).write_text(n)
        return fill
    write_output_dir(out, entries("a", "b", "sub/"), "k")
    (out / "mine.txt").write_text("keep")
    write_output_dir(out, entries("a/", "sub"), "k")
    assert sorted(os.listdir(out)) == [MARKER, "a", "mine.txt", "sub"]
    assert (out / "a").is_dir() and (out / "sub").read_text() == "sub"
    assert json.loads((out / MARKER).read_text())["files"] == ["a", "sub"]
    (out / "c").mkdir()
    (out / "c" / "x").write_text("mine")
    with pytest.raises(OutputRefused, match="never replaces"):
        write_output_dir(out, entries("c"), "k", force=True)
    assert (out / "c" / "x").read_text() == "mine" and not [n for n in os.listdir(out) if n.startswith(".tmp-")]
    if os.getuid() == 0:   # a link another user planted (CI runs as root: it can play the other user)
        victim = tmp_path / "victim"
        victim.write_text("precious")
        os.symlink(victim, out / "d")
        os.lchown(out / "d", 12345, 12345)
        with pytest.raises(OutputRefused, match="another user"):
            write_output_dir(out, entries("d"), "k", force=True)
        assert victim.read_text() == "precious" and os.path.islink(out / "d")


def test_start_up_leaves_a_users_tmp_and_old_folders(daemon, job):
    """The clean-up at start-up (a daemon restart) removes only temporaries it wrote: a user's
    `.tmp-*` and `.old-*` folders in a job's folder stay."""
    out = daemon.home / "runs" / job
    for name in (".tmp-notes", ".old-adapter-1"):
        (out / name).mkdir()
        (out / name / "mine.txt").write_text("keep\n")
    daemon.stop()
    daemon.start()
    assert (out / ".tmp-notes" / "mine.txt").read_text() == (out / ".old-adapter-1" / "mine.txt").read_text()


# -- finding 3: export and report wrote through links and over users' files ----------------------------------
def test_export_never_writes_through_a_planted_link(daemon, job, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.symlink(victim, shared / "adapter_config.json")
    err = error_of(cli(daemon.home, "adapters", "export", f"job:{job}", str(shared), "--json"))
    assert err["code"] == "INVALID_ARGUMENT" and "adapter_config.json" in err["message"]
    assert victim.read_text() == "precious\n"
    cli(daemon.home, "adapters", "export", f"job:{job}", str(shared), "--force", check=True)
    assert victim.read_text() == "precious\n"                      # the link was replaced, not followed
    assert stat.S_ISREG(os.lstat(shared / "adapter_config.json").st_mode)
    assert json.loads((shared / "adapter_config.json").read_text())["peft_type"] == "LORA"

    link = tmp_path / "link-to-dir"
    os.symlink(tmp_path / "elsewhere", link)
    (tmp_path / "elsewhere").mkdir()
    err = error_of(cli(daemon.home, "adapters", "export", f"job:{job}", str(link), "--force", "--json"))
    assert err["code"] == "INVALID_ARGUMENT" and "symbolic link" in err["message"]
    assert not os.listdir(tmp_path / "elsewhere")


def test_export_keeps_a_users_adapter_config_unless_forced(daemon, job, tmp_path):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "adapter_config.json").write_text('{"mine": true}\n')
    (dest / "keep.txt").write_text("keep\n")
    err = error_of(cli(daemon.home, "adapters", "export", job, str(dest), "--json"))
    assert err["code"] == "INVALID_ARGUMENT" and "--force" in err["message"]
    assert (dest / "adapter_config.json").read_text() == '{"mine": true}\n'
    cli(daemon.home, "adapters", "export", job, str(dest), "--force", check=True)
    assert "peft_type" in json.loads((dest / "adapter_config.json").read_text())
    assert (dest / "keep.txt").read_text() == "keep\n"
    # a folder exported to before is ours: exporting again needs no --force, and keeps keep.txt
    cli(daemon.home, "adapters", "export", job, str(dest), check=True)
    assert (dest / "keep.txt").read_text() == "keep\n"


def test_export_over_a_file_or_onto_its_own_source_is_invalid_argument(daemon, job, tmp_path):
    stub = daemon.stub()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x\n")
    src = tmp_path / "src"
    cli(daemon.home, "adapters", "export", job, str(src), check=True)
    src_files = tree(src)
    for adapter, out, why in [(f"job:{job}", a_file, "is a file"), (str(src), src, "made from"),
                              (str(src), src / "inner", "made from"), (str(src), tmp_path, "made from")]:
        with pytest.raises(grpc.RpcError) as e:
            stub.ExportAdapter(pb.ExportAdapterRequest(adapter=adapter, out_dir=str(out), force=True))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and why in e.value.details(), e.value.details()
    assert a_file.read_text() == "x\n" and tree(src) == src_files
    err = error_of(cli(daemon.home, "adapters", "fuse", str(src), str(src), "--json"))
    assert err["code"] == "INVALID_ARGUMENT" and "made from" in err["message"]


def test_report_output_is_never_a_folder_a_link_or_a_users_file(daemon, job, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.symlink(victim, tmp_path / "report.html")
    (tmp_path / "notes.html").write_text("<p>my notes</p>\n")
    for out, why in [(tmp_path, "is a folder"), (tmp_path / "report.html", "symbolic link"),
                     (tmp_path / "notes.html", "not a MacTuner report")]:
        err = error_of(cli(daemon.home, "report", job, "-o", str(out), "--generate", "0", "--json"))
        assert why in err["message"], err
    assert victim.read_text() == "precious\n" and (tmp_path / "notes.html").read_text() == "<p>my notes</p>\n"
    mine = tmp_path / "r.html"
    for _ in range(2):   # our own report is replaced without --force
        cli(daemon.home, "report", job, "-o", str(mine), "--generate", "0", check=True)
    cli(daemon.home, "report", job, "-o", str(tmp_path / "notes.html"), "--generate", "0", "--force", check=True)
    assert "MacTuner report" in (tmp_path / "notes.html").read_text()


# -- the same promises in-process (a real Core and store, a fake trainer: tests/jobs_fakes.py) ---------------
@pytest.fixture
def core(tmp_path):
    from jobs_fakes import FakeTrainer
    from tunerd.core import Core

    trainer = FakeTrainer()
    (tmp_path / "home").mkdir()
    c = Core(tmp_path / "home", run_training=trainer)
    c.start()
    yield c
    c.shutdown(5)


def test_concurrent_submits_of_one_output_dir_claim_it_once(core, tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    from jobs_fakes import job_doc
    from tunerd.files import OutputRefused

    (tmp_path / "model").mkdir()
    out = tmp_path / "shared-out"

    def submit(_):
        try:
            return core.submit(doc=job_doc(tmp_path / "model", output_dir=str(out)), base_dir=str(tmp_path)).id
        except OutputRefused as e:
            return e
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(submit, range(8)))
    ids = [r for r in results if isinstance(r, str)]
    assert len(ids) == 1, results
    assert all(f"is job {ids[0]}'s output folder" in str(r) for r in results if not isinstance(r, str))
    assert [r.id for r in core.list_jobs()] == ids


def test_resume_adopts_a_jobs_folder_from_before_markers(core, tmp_path):
    """A job submitted before markers existed: resume marks its folder as the job's, touching
    nothing in it; a folder that another job's marker names is not taken over."""
    from jobs_fakes import job_doc, wait_until
    from tunerd.files import MARKER, OutputRefused

    (tmp_path / "model").mkdir()
    job = core.submit(doc=job_doc(tmp_path / "model"), base_dir=str(tmp_path))
    wait_until(lambda: core.get_job(job.id).state == "succeeded")
    out = Path(job.output_dir)
    (out / MARKER).unlink()                                   # as an older daemon left it
    (out / "checkpoint-2").mkdir()
    core.store.transition(job.id, ("succeeded",), "interrupted", "as after an old daemon's crash")
    before = tree(out)
    core.resume_job(job.id)
    wait_until(lambda: core.get_job(job.id).state == "succeeded")
    assert json.loads((out / MARKER).read_text())["job"] == job.id
    assert {k: tree(out)[k] for k in before} == before

    (out / MARKER).write_text(json.dumps({"kind": "job", "job": "someone-else"}))
    core.store.transition(job.id, ("succeeded",), "interrupted", "again")
    with pytest.raises(OutputRefused, match="someone-else"):
        core.resume_job(job.id)
