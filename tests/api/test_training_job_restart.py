"""A queued training that was interrupted continues its own version folder on the next attempt,
whether or not it reached its first checkpoint."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lorastudio.core.settings import StudioSettings
from lorastudio.testing.job_context import RecordingJobContext



class _Stop(Exception):
    pass


@pytest.mark.parametrize("with_checkpoint", [False, True])
def test_an_interrupted_job_resumes_its_own_version(tmp_path, with_checkpoint):
    from lorastudio.interfaces.api.training_jobs import make_training_handler

    projects = tmp_path / "projects"
    vdir = projects / "Deltamon" / "versions" / "v1"
    (vdir / "dataset").mkdir(parents=True)  # what a run killed at step 3 of 5 (save_every 5) leaves
    (vdir / "dataset" / "a.png").write_bytes(b"x")
    if with_checkpoint:
        (vdir / "checkpoints" / "step-00000002").mkdir(parents=True)
    seen = {}

    def train(config, on_event=None, **_):
        seen.update(resume=config.resume, version=config.version)
        raise _Stop

    settings = StudioSettings(models_dir=tmp_path / "models", projects_dir=projects, outdir=tmp_path / "out",
                              report_after_training=False)
    job = SimpleNamespace(id="j1", attempts=1, progress={"version": "v1"},
                          payload={"config": {"images": str(tmp_path), "trigger": "Deltamon", "base": "x"}})
    with pytest.raises(_Stop):
        make_training_handler(settings, train_fn=train)(job, RecordingJobContext())
    assert seen == {"resume": True, "version": "v1"}


def test_a_first_attempt_does_not_resume(tmp_path):
    from lorastudio.interfaces.api.training_jobs import make_training_handler

    seen = {}

    def train(config, on_event=None, **_):
        seen.update(resume=config.resume)
        raise _Stop

    settings = StudioSettings(models_dir=tmp_path / "models", projects_dir=tmp_path / "projects",
                              outdir=tmp_path / "out", report_after_training=False)
    job = SimpleNamespace(id="j1", attempts=0, progress={},
                          payload={"config": {"images": str(tmp_path), "trigger": "Deltamon", "base": "x"}})
    with pytest.raises(_Stop):
        make_training_handler(settings, train_fn=train)(job, RecordingJobContext())
    assert seen == {"resume": False}
