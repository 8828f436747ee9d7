"""Typed training settings (TOML included) and the optimizer / schedule choices."""

import pytest
import torch

from lorastudio.core.errors import InvalidParameter
from lorastudio.training.config import load_toml, training_config
from lorastudio.training.optimizers import build_lr_scheduler, build_optimizer

REQ = dict(images="pics", trigger="DeltamonStamp", base="sd15.safetensors")


def test_toml_is_validated_and_paths_are_relative_to_the_file(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('images = "pics"\ntrigger = "DeltamonStamp"\nbase = "sd15"\nrank = 8\nresolution = [512, 768]\n')
    cfg = load_toml(f)
    assert cfg.images == tmp_path / "pics" and cfg.rank == 8 and cfg.resolution == [512, 768]
    f.write_text('images = "pics"\ntrigger = "x"\nbase = "b"\nlearning_rate = 1e-4\n')
    with pytest.raises(InvalidParameter) as e:
        load_toml(f)
    assert e.value.field == "learning_rate"  # unknown keys are named, never ignored
    f.write_text("images = [")
    with pytest.raises(InvalidParameter) as e:
        load_toml(f)
    assert "run.toml" in str(e.value)


@pytest.mark.parametrize("bad, field", [
    (dict(rank=0), "rank"), (dict(lr=float("nan")), "lr"), (dict(lr=float("inf")), "lr"),
    (dict(steps=-1), "steps"), (dict(steps=0), "steps"), (dict(optimizer="sgd"), "optimizer"),
    (dict(project="../escape"), "project"), (dict(batch_size=0), "batch_size"),
])
def test_bad_values_name_their_field(bad, field):
    with pytest.raises(InvalidParameter) as e:
        training_config({**REQ, **bad})
    assert e.value.field == field


def test_steps_and_epochs_are_exclusive():
    with pytest.raises(InvalidParameter):
        training_config({**REQ, "steps": 10, "epochs": 2})


@pytest.mark.parametrize("name", ["adamw", "lion", "prodigy", "adafactor"])
def test_each_optimizer_reduces_a_simple_loss(name):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    lr = {"prodigy": 1.0, "lion": 1e-3}.get(name, 1e-2)
    opt = build_optimizer(name, [{"params": list(model.parameters()), "lr": lr}], lr=lr, weight_decay=0.0,
                          device="cpu")
    sched = build_lr_scheduler("cosine", opt, warmup=2, total_steps=60)
    first = float(torch.nn.functional.mse_loss(model(x), y).detach())
    for _ in range(60):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    assert float(torch.nn.functional.mse_loss(model(x), y)) < first


def test_8bit_adamw_needs_cuda():
    with pytest.raises(InvalidParameter) as e:
        build_optimizer("adamw8bit", [{"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=1e-3,
                        weight_decay=0.0, device="cpu")
    assert "CUDA" in str(e.value)


@pytest.mark.parametrize("name, warmup, after_first, before_last", [
    ("constant", 0, 1.0, 1.0), ("constant", 4, 0.25, 1.0), ("linear", 0, 0.9, 0.1), ("cosine", 0, 0.9755, 0.0245),
])
def test_schedules(name, warmup, after_first, before_last):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_lr_scheduler(name, opt, warmup=warmup, total_steps=10)
    lrs = []
    for _ in range(10):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert lrs[0] == pytest.approx(after_first, abs=1e-3)
    assert lrs[-2] == pytest.approx(before_last, abs=1e-3)
