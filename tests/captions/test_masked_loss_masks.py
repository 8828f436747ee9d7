"""Mask files meet training: the dataset check pairs them with their picture, the loader uses them."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from lorastudio.training.data import Item, LatentCache, image_tensor
from lorastudio.training.dataset.checks import check_dataset
from lorastudio.training.dataset.config import dataset_config


def _dataset(tmp_path):
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "a.png")
    Image.new("RGB", (64, 64), (10, 200, 10)).save(tmp_path / "b.png")
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, :32] = 255
    Image.fromarray(mask, "L").save(tmp_path / "a.mask.png")
    return mask


def test_check_pairs_mask_files_with_pictures(tmp_path):
    _dataset(tmp_path)
    report = check_dataset(tmp_path, dataset_config({"trigger_word": "zed", "resolutions": [64], "bucket_step": 8,
                                                     "use_alpha_mask": True}))
    assert report.ok, report.render()
    assert sorted(i.image_path.name for i in report.items) == ["a.png", "b.png"]  # the mask is no picture
    assert {i.image_path.name: i.mask_available for i in report.items} == {"a.png": True, "b.png": False}


def test_loader_reads_the_mask_file_and_the_cache_key_follows_it(tmp_path):
    mask = _dataset(tmp_path)
    item = Item(tmp_path / "a.png", "zed", 64, 64, 1)
    _, got = image_tensor(item, (255, 255, 255))
    torch.testing.assert_close(got[0], torch.from_numpy(mask.astype(np.float32) / 255.0))
    _, none = image_tensor(Item(tmp_path / "b.png", "zed", 64, 64, 1), (255, 255, 255))
    assert none is None
    cache = LatentCache(tmp_path / "cache", "m", (255, 255, 255))
    before = cache.key(item)
    Image.fromarray(255 - mask, "L").save(tmp_path / "a.mask.png")
    assert cache.key(item) != before  # a new mask is a new training target: latents re-made
