"""Regularisation pictures (kohya's reg_data_dir, DreamBooth prior preservation)."""

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from lorastudio.core.errors import InvalidParameter
from lorastudio.training.data import Item, epoch_batches


def _items(n_train: int, n_reg: int, *, train_repeats: int = 1, reg_sizes=((64, 64),)) -> list[Item]:
    items = [Item(Path(f"t{i}.png"), "DeltamonStamp", 64, 64, train_repeats) for i in range(n_train)]
    for j in range(n_reg):
        w, h = reg_sizes[j % len(reg_sizes)]
        items.append(Item(Path(f"r{j}.png"), "a red circle", w, h, 1, regularisation=True))
    return items


def _reg_count(items, batches) -> tuple[int, int]:
    flat = [i for b in batches for i in b]
    reg = sum(items[i].regularisation for i in flat)
    return len(flat) - reg, reg


@pytest.mark.parametrize("n_train, repeats, n_reg", [(4, 1, 2), (4, 3, 5), (3, 1, 20)])
def test_each_epoch_holds_as_many_regularisation_places_as_training_places(n_train, repeats, n_reg):
    items = _items(n_train, n_reg, train_repeats=repeats)
    for epoch in range(4):
        train, reg = _reg_count(items, epoch_batches(items, 2, seed=1, epoch=epoch))
        assert train == n_train * repeats
        assert reg == n_train * repeats


def test_more_regularisation_pictures_than_training_places_rotate_across_epochs():
    items = _items(3, 12)
    seen: Counter = Counter()
    for epoch in range(4):  # 4 epochs x 3 places = 12: every reg picture exactly once
        batches = epoch_batches(items, 2, seed=7, epoch=epoch)
        seen.update(i for b in batches for i in b if items[i].regularisation)
    assert sorted(seen) == list(range(3, 15)) and set(seen.values()) == {1}


def test_batch_count_is_the_same_every_epoch_with_several_reg_buckets():
    items = _items(5, 7, reg_sizes=((64, 64), (48, 80)))
    counts = {len(epoch_batches(items, 2, seed=3, epoch=e)) for e in range(6)}
    assert len(counts) == 1
    for b in epoch_batches(items, 2, seed=3, epoch=2):
        assert len({(items[i].width, items[i].height) for i in b}) == 1  # one bucket per batch


def test_no_regularisation_gives_the_seeded_shuffle_of_the_training_places():
    import random

    items = _items(5, 0, train_repeats=2)
    items.append(Item(Path("wide.png"), "DeltamonStamp", 96, 48, 1))  # a second bucket
    got = epoch_batches(items, 2, seed=5, epoch=1)
    # Expected from the documented rule, worked out here: one Random("seed:epoch") shuffles each
    # bucket's places (sorted bucket order), cuts them into batches, then shuffles the batches.
    rng = random.Random("5:1")
    square = [i for i in range(5) for _ in range(2)]
    rng.shuffle(square)
    wide = [5]
    rng.shuffle(wide)
    want = [square[j:j + 2] for j in range(0, 10, 2)] + [wide]
    rng.shuffle(want)
    assert got == want
    assert sorted(i for b in got for i in b) == sorted(square + wide)  # every place once, repeats counted
    assert got != epoch_batches(items, 2, seed=5, epoch=2)  # another epoch, another order


def test_sample_weights_scale_each_sample_loss():
    from lorastudio.models.objectives import weighted_mse

    pred = torch.zeros(2, 1, 2, 2)
    target = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 2.0)])  # per-sample mse 1 and 4
    ones = torch.ones(2)
    assert weighted_mse(pred, target, ones).item() == pytest.approx(2.5)
    assert weighted_mse(pred, target, ones, sample_weights=torch.tensor([1.0, 0.5])).item() == pytest.approx(1.5)


def _reg_folder(root: Path, n: int = 3, captions: bool = True) -> Path:
    import numpy as np

    from lorastudio.testing import shapes

    folder = root / "reg"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        spec = shapes.sample_spec(rng)
        shapes.render(spec, 64).save(folder / f"reg{i}.png")
        if captions:
            (folder / f"reg{i}.txt").write_text(f"a {spec.colour} {spec.shape}")
    return folder


def test_regularisation_captions_are_used_as_written(tmp_path):
    from lorastudio.training.api import prepare_items
    from lorastudio.training.config import training_config

    folder = _reg_folder(tmp_path, captions=False)
    (folder / "reg0.txt").write_text("a red circle, flat")
    cfg = training_config(dict(images=tmp_path, trigger="DeltamonStamp", base="x", reg_images=folder,
                               class_word="shape"))
    _, items, _ = prepare_items(cfg, 64, regularisation=True)
    captions = sorted({it.caption for it in items})
    assert captions == ["a red circle, flat", "shape"]  # no trigger; the class word where no caption
    assert all(it.repeats == 1 for it in items)


@pytest.fixture(scope="module")
def world(tmp_path_factory, training_world):
    root = training_world(tmp_path_factory.mktemp("reg"), images=4, size=64)
    _reg_folder(root, n=3)
    return root


def _cfg(world, **kw):
    return {**dict(images=world / "data", trigger="DeltamonStamp", base="tiny", steps=3, resolution=[64], rank=4,
                   lr=5e-3, seed=3, batch_size=2, models_dir=world / "models", projects_dir=world / "projects"), **kw}


def test_training_with_regularisation_pictures(world):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from lorastudio.training.api import train

    plain = train(_cfg(world, project="plain"))
    reg = train(_cfg(world, project="reg", reg_images=world / "reg", prior_loss_weight=0.5))
    v = reg.version_dir
    assert sorted(p.name for p in (v / "reg").glob("*.png")) == ["reg0.png", "reg1.png", "reg2.png"]
    assert not any("DeltamonStamp" in p.read_text() for p in (v / "reg").glob("*.txt"))
    config = json.loads(reg.config_path.read_text())
    assert config["prior_loss_weight"] == 0.5 and Path(config["reg_images"]) == world / "reg"
    with safe_open(str(reg.lora_path), "pt") as f:
        md = f.metadata()
    assert md["ss_num_train_images"] == "4" and md["ss_num_reg_images"] == "3"
    assert md["ss_prior_loss_weight"] == "0.5"
    a, b = load_file(str(plain.lora_path)), load_file(str(reg.lora_path))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the reg pictures took part


def test_prior_loss_weight_changes_the_result(world):
    from safetensors.torch import load_file

    from lorastudio.training.api import train

    light = train(_cfg(world, project="w-light", steps=2, reg_images=world / "reg", prior_loss_weight=0.1))
    heavy = train(_cfg(world, project="w-heavy", steps=2, reg_images=world / "reg", prior_loss_weight=3.0))
    a, b = load_file(str(light.lora_path)), load_file(str(heavy.lora_path))
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_missing_regularisation_folder_is_named(world):
    from lorastudio.training.api import train

    with pytest.raises(InvalidParameter) as e:
        train(_cfg(world, project="missing", reg_images=world / "nope"))
    assert e.value.field == "reg_images" and "nope" in str(e.value)
    assert not (world / "projects" / "missing").exists()


def test_command_line_flags(world):
    from safetensors import safe_open
    from typer.testing import CliRunner

    from lorastudio.interfaces.cli.app import app

    args = ["train", "--images", world / "data", "--trigger", "DeltamonStamp", "--base", "tiny", "--steps", "1",
            "--resolution", "64", "--rank", "2", "--models-dir", world / "models", "--projects-dir",
            world / "projects", "--project", "cli", "--reg-images", world / "reg", "--prior-loss-weight", "0.25",
            "--class-word", "shape", "--no-report"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    v = world / "projects" / "cli" / "versions" / "v1"
    config = json.loads((v / "config.json").read_text())
    assert config["prior_loss_weight"] == 0.25 and config["class_word"] == "shape"
    with safe_open(str(v / "cli.safetensors"), "pt") as f:
        assert f.metadata()["ss_num_reg_images"] == "3"
