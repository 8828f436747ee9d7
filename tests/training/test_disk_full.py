"""A full disk while training: a clear message naming the folder and what to free, nothing
incomplete under a final name, and --resume continuing exactly.

The disk is filled by the one function every training write goes through
(`lorastudio.core.atomic.write_all`): it writes half the bytes, then fails with ENOSPC as the
kernel does; everything around it (temporary names, renames, clean-up, messages) is the
product's own code.
"""

import errno
import os

import pytest
import torch
from safetensors.torch import load_file

from lorastudio.core import atomic
from lorastudio.core.errors import DiskFullError

BASE = dict(trigger="DeltamonStamp", base="tiny", resolution=[64], rank=4, lr=5e-3, seed=11)


@pytest.fixture(scope="module")
def world(tmp_path_factory, training_world):
    return training_world(tmp_path_factory.mktemp("diskfull"), images=2, size=64)


def cfg(world, **kw):
    return {**BASE, "images": world / "data", "models_dir": world / "models", "projects_dir": world / "projects", **kw}


def fill_disk_for(monkeypatch, marker: str):
    """Writes to files whose path contains `marker` run out of space half-way."""
    real = atomic.write_all

    def write_all(fh, data):
        if marker in str(fh.name):
            fh.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fh, data)

    monkeypatch.setattr(atomic, "write_all", write_all)


def files_under(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_disk_full_while_caching_latents(world, monkeypatch):
    from lorastudio.training.api import train

    fill_disk_for(monkeypatch, os.sep + "latents" + os.sep)
    with pytest.raises(DiskFullError) as err:
        train(cfg(world, project="cache", steps=2))
    v = world / "projects" / "cache" / "versions" / "v1"
    msg = str(err.value)
    assert msg.startswith(f"no space left on {v / 'cache' / 'latents'}: ")
    assert "checkpoints/" in msg and "--resume" in msg
    assert files_under(v / "cache") == []  # no partial latent under a final (or temporary) name
    assert not (v / "cache.safetensors").exists() and not list(v.glob("*.safetensors"))

    monkeypatch.undo()  # space freed: the same version continues
    done = train(cfg(world, project="cache", steps=2, resume=True))
    assert done.version_dir == v and done.steps == 2 and done.lora_path.exists()


def test_disk_full_while_saving_a_checkpoint_then_resume_is_exact(world, monkeypatch):
    from lorastudio.training.api import train

    full = train(cfg(world, project="whole", steps=4, save_every=1))

    fill_disk_for(monkeypatch, ".step-000002.partial")
    with pytest.raises(DiskFullError) as err:
        train(cfg(world, project="cut", steps=4, save_every=1))
    v = world / "projects" / "cut" / "versions" / "v1"
    assert str(err.value).startswith(f"no space left on {v / 'checkpoints'}: ")
    # The half-written checkpoint is gone; the last complete one is what --resume will use.
    assert sorted(p.name for p in (v / "checkpoints").iterdir()) == ["step-000001"]
    assert not (v / "cut.safetensors").exists()

    monkeypatch.undo()
    resumed = train(cfg(world, project="cut", steps=4, save_every=1, resume=True))
    a, b = load_file(str(full.lora_path)), load_file(str(resumed.lora_path))
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:  # same machine, same run resumed: bit for bit (as the interrupted-run test promises)
        assert torch.equal(a[k], b[k]), k


def test_disk_full_writing_the_lora_leaves_no_partial_file(world, monkeypatch):
    from lorastudio.training.api import train

    fill_disk_for(monkeypatch, "final-lora.safetensors")
    with pytest.raises(DiskFullError) as err:
        train(cfg(world, project="final-lora", steps=1))
    v = world / "projects" / "final-lora" / "versions" / "v1"
    assert str(err.value).startswith(f"no space left on {v}: ")
    assert [p.name for p in v.iterdir() if p.is_file() and "final-lora" in p.name] == []


def test_the_helper_passes_other_errors_through(tmp_path):
    with pytest.raises(PermissionError):
        with atomic.disk_space_checked(tmp_path):
            raise PermissionError(errno.EACCES, "denied")
    with pytest.raises(DiskFullError) as err:
        with atomic.disk_space_checked(tmp_path):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    assert str(err.value).startswith(f"no space left on {tmp_path}: ")


def test_disk_full_before_the_diffusers_copy_is_written(tmp_path, monkeypatch):
    """diffusers writes that file itself (its writer has its own error type), so the free space is
    checked first; here the disk reports 1 KiB free."""
    import shutil
    from collections import namedtuple

    from lorastudio.testing.tiny_sd import tiny_sd1_pipeline
    from lorastudio.models.diffusers_lora import save_diffusers_lora

    pipe = tiny_sd1_pipeline(0)
    lora = {"unet": {"down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 32)}}
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1024, 1024))
    with pytest.raises(DiskFullError) as err:
        save_diffusers_lora(type(pipe), pipe, lora, tmp_path / "v1" / "diffusers")
    assert str(err.value).startswith(f"no space left on {tmp_path / 'v1'}: ")
    assert not (tmp_path / "v1" / "diffusers").exists() and not (tmp_path / "v1" / "diffusers.partial").exists()
