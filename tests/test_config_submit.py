"""Every config rule is checked at submit, all problems at once (issue 9, finding 8): the loader's
one validator, and the real daemon + CLI returning INVALID_ARGUMENT that names field and file."""
from __future__ import annotations

import os

import pytest

from tuner.v1 import tuner_pb2 as pb

from tunerd.config.loader import ConfigError, load_config

from daemon_utils import DaemonProcess, cli, json_lines, short_home, write_config


def problems(**kw) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(**kw)
    return e.value.problems


BASE = {"model": "m", "data": {"train": "t.jsonl"}}


@pytest.mark.parametrize("doc, needle", [
    ({"max_steps": -5}, "max_steps: must be > 0, or -1"),
    ({"lr_scheduler_kwargs": "abc"}, "lr_scheduler_kwargs: expected a mapping"),
    ({"lr_scheduler_kwargs": {"num_cylces": 1}}, "did you mean lr_scheduler_kwargs.num_cycles"),
    ({"lr_scheduler_type": "polynomial", "learning_rate": 1e-4, "lr_scheduler_kwargs": {"lr_end": 1e-3}},
     "lr_end (0.001) must be <= learning_rate"),
    ({"seed": 1e30}, "seed: must be in [0, 2**32)"),
    ({"load_best_model_at_end": True, "eval_strategy": "no"}, "load_best_model_at_end: needs eval_strategy"),
    ({"load_best_model_at_end": True, "eval_steps": 30, "save_steps": 100}, "must be a multiple of eval_steps"),
    ({"early_stopping_patience": 2, "eval_strategy": "no"}, "early_stopping_patience: needs eval_strategy"),
    ({"metric_for_best_model": "accuracy"}, "metric_for_best_model: 'accuracy' is not an eval metric"),
])
def test_rules_that_used_to_fail_only_inside_the_job(doc, needle):
    assert any(needle in p for p in problems(doc={**BASE, **doc})), problems(doc={**BASE, **doc})


def test_bad_overrides_are_config_errors_naming_the_override():
    ps = problems(doc=BASE, overrides=["model.x=1", "lora_r=[1", "lora_r=0", "seed=-1"])
    assert ps == ["override 'model.x=1': model is a value ('m'), not a section with keys",
                  ps[1], "lora_r: must be > 0, got 0 (from --set lora_r=0)",
                  "seed: must be in [0, 2**32), got -1 (from --set seed=-1)"], ps
    assert ps[1].startswith("override 'lora_r=[1': the value is not valid YAML")
    assert problems(doc={**BASE, "lora_r": 8}, overrides=["lora_r.x=1"]) == [
        "override 'lora_r.x=1': lora_r is a value (8), not a section with keys"]
    assert problems(doc=BASE, overrides=["lora_r.x=1"]) == [
        "lora_r: expected a single value, not a mapping (got {'x': 1}) (from --set lora_r.x=1)"]


def test_four_problems_are_reported_together(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: m\ndata: t.jsonl\nmax_steps: -5\nlearning_rat: 1\nseed: 1e30\nmetric_for_best_model: acc\n")
    ps = problems(path=f)
    assert len(ps) == 4, ps
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value).startswith(str(f.resolve())), str(e.value)


def test_paths_checked_at_submit(tmp_path, tiny_model_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    ps = problems(doc={**BASE, "model": tiny_model_dir, "output_dir": str(blocker / "out"),
                       "max_seq_length": 4096}, check_paths=True)
    assert any(f"output_dir: {blocker / 'out'} cannot be created: {blocker} is not a directory" in p for p in ps)
    assert any("max_seq_length: 4096 is beyond the model's context of 512 positions" in p
               and "max_position_embeddings" in p for p in ps), ps


@pytest.mark.slow
def test_submit_reports_every_problem_as_invalid_argument(demo_bundle, tmp_path):
    """Through the real daemon and CLI: YAML errors, a directory, bad overrides, unwritable
    output_dir and four problems at once are INVALID_ARGUMENT (not INTERNAL, not a failed job)."""
    home = short_home()
    d = DaemonProcess(home).start()
    try:
        def submit(*args):
            p = cli(home, "train", *args, "--detach", "--json", timeout=60)
            assert p.returncode == 1, p.stdout + p.stderr
            return json_lines(p.stdout)[-1]["error"]

        blocker = tmp_path / "a-file"
        blocker.write_text("")
        cfg = write_config(tmp_path / "c.yaml", demo_bundle, max_steps=-5, seed=1e30, metric_for_best_model="acc",
                           output_dir=str(blocker / "out"), max_seq_length=4096,
                           lr_scheduler_kwargs="abc")
        err = submit(str(cfg))
        assert err["code"] == "INVALID_ARGUMENT"
        for part in ("max_steps", "seed", "metric_for_best_model", "output_dir", "max_seq_length: 4096",
                     "lr_scheduler_kwargs"):
            assert part in err["message"], err["message"]
        assert str(cfg) in err["message"]

        good = write_config(tmp_path / "g.yaml", demo_bundle)
        for args, needle in ((["--set", "lora_r=[1"], "not valid YAML"), (["--set", "model.x=1"], "model is a value"),
                             (["--set", "lora_r.x=1"], "lora_r is a value")):
            err = submit(str(good), *args)
            assert err["code"] == "INVALID_ARGUMENT" and needle in err["message"], err
        (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
        err = submit(str(tmp_path / "bad.yaml"))
        assert err["code"] == "INVALID_ARGUMENT" and "invalid YAML" in err["message"], err
        err = submit(str(tmp_path))
        assert err["code"] == "INVALID_ARGUMENT" and "is a directory" in err["message"], err
        assert "Traceback" not in (home / "tunerd.log").read_text()
        assert not d.stub().ListJobs(pb.ListJobsRequest()).jobs  # nothing was queued
    finally:
        d.stop()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_dir_is_refused_at_submit(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    ps = problems(doc={**BASE, "output_dir": str(ro / "run")}, check_paths=True)
    assert any(f"output_dir: {ro / 'run'} is not writable" in p for p in ps), ps


def test_one_submit_validates_its_config_once(tmp_path, monkeypatch):
    """Core.submit -> the loader (every rule, and the paths) -> JobManager -> the runner -> the
    loop: the job's stored config is rebuilt, not validated again, and the loop does not check a
    job's config a second time (it still checks one built in code: test_training_loop)."""
    from types import SimpleNamespace

    import tunerd.config.rules as rules
    from jobs_fakes import job_doc, wait_until
    from tunerd.core import Core
    from tunerd.jobs import runner
    from tunerd.training import loop

    checked, trained = [], []
    real = rules._run_rules
    monkeypatch.setattr(rules, "_run_rules", lambda cfg: checked.append(cfg.max_steps) or real(cfg))
    monkeypatch.setattr(runner, "get_backend", lambda name: SimpleNamespace(name=name))
    monkeypatch.setattr(loop.Trainer, "run", lambda self: trained.append(self.cfg) or SimpleNamespace(adapter_path=""))
    core = Core(tmp_path, run_training=runner.run_training)
    core.start()
    try:
        (tmp_path / "model").mkdir()
        rec = core.submit(doc=job_doc(tmp_path / "model", max_steps=3), base_dir=str(tmp_path))
        wait_until(lambda: core.get_job(rec.id).state not in ("queued", "running"), 30, "the job to end")
        assert core.get_job(rec.id).state == "succeeded", core.get_job(rec.id).error
    finally:
        core.shutdown(5)
    assert checked == [3] and [c.max_steps for c in trained] == [3]
