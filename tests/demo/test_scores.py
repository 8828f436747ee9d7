"""The concept score: 1 for the training pictures themselves, lower for anything else."""

import numpy as np
from PIL import Image

from lorastudio.evaluation.scores import concept_score
from lorastudio.training.dataset.fixtures import draw_sticker_dataset


def test_the_training_pictures_score_one_and_other_pictures_less(tmp_path):
    draw_sticker_dataset(tmp_path, n=4, trigger="X", seed=0, size=64)
    refs = [Image.open(p) for p in sorted(tmp_path.glob("*.png"))]
    assert concept_score(refs, refs) == 1.0
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    flat = Image.new("RGB", (64, 64), (20, 60, 200))
    assert concept_score([noise], refs) < 0.6 and concept_score([flat], refs) < 0.6
    # the mean over images: one match and one miss land in between
    both = concept_score([refs[0], flat], refs)
    assert concept_score([flat], refs) < both < 1.0
