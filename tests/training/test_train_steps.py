"""train() as public steps: prepare -> run -> export, with previews as a callback.

The benchmark, the job queue and a progress UI use these steps; `train` is their composition."""

import pytest
import torch
from safetensors.torch import load_file

BASE = dict(trigger="DeltamonStamp", base="tiny", resolution=[64], rank=4, lr=5e-3, seed=11, steps=2)


@pytest.fixture(scope="module")
def world(tmp_path_factory, training_world):
    return training_world(tmp_path_factory.mktemp("steps"), images=2, size=64)


def cfg(world, **kw):
    return {**BASE, "images": world / "data", "models_dir": world / "models", "projects_dir": world / "projects", **kw}


def test_the_steps_one_by_one_make_what_train_makes(world):
    from lorastudio.training.api import export, prepare, run, train

    events = []
    prepared = prepare(cfg(world, project="steps"), events.append, previews=None)
    # after prepare: the resolved config is on disk, the trainer is set up, nothing is trained yet
    assert prepared.config.alpha is not None and prepared.config.train_text_encoder is not None
    assert prepared.vdir.config.exists() and not prepared.vdir.lora("steps").exists()
    assert prepared.trainer.total_steps == 2 and prepared.trainer.state.step == 0
    assert not any(e.kind == "progress" for e in events)

    state = run(prepared)
    assert state.step == 2 and [e.step for e in events if e.kind == "progress"] == [1, 2]
    result = export(prepared, state)
    assert result.lora_path.exists() and events[-1].kind == "done"

    whole = train(cfg(world, project="whole"))
    ours, theirs = load_file(str(result.lora_path)), load_file(str(whole.lora_path))
    assert ours.keys() == theirs.keys() and ours
    # the same computation twice in one process: bit-identical
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_previews_are_a_callback_called_during_the_run_and_at_the_end(world):
    from lorastudio.training.api import export, prepare, run

    calls = []

    def previews(model, config, vdir, pipe):
        assert pipe is model.pipe and config.project == "previews"

        def draw(step):
            calls.append(step)
            path = vdir.samples / f"preview-{step}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(str(step))
            return [path]

        return draw

    events = []
    prepared = prepare(cfg(world, project="previews", steps=3, sample_every=2), events.append, previews=previews)
    result = export(prepared, run(prepared))
    assert calls == [2, 3]  # every sample_every steps, then the final one from export
    assert [p.name for p in result.samples] == ["preview-3.txt"]
    assert [e.path.name for e in events if e.kind == "sample"] == ["preview-2.txt", "preview-3.txt"]
