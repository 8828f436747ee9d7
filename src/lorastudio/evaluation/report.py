"""The LoRA report's measures, from images already drawn (no model here).

- concept score per weight: how close the trigger prompts' images are to the training pictures
  (`ImageScorer`: a CLIP vision encoder's cosine similarity when one is available, else the
  colour/pixel score of `lorastudio.evaluation.scores`);
- base preservation per weight: how similar the trigger-free prompts' images at weight w are
  to the same prompts and seeds at weight 0 (1 = unchanged);
- recommended weight: the smallest swept weight whose concept gain over weight 0 reaches
  RECOMMEND_FRACTION of the best gain, while preservation stays >= PRESERVATION_BOUND;
  a best gain under NO_EFFECT_GAIN means the LoRA has no visible effect;
- progress over steps: the concept score of the step-N previews, and the earliest step that
  was as good as the last one.

The gain is measured above the weight-0 score because the base already scores above zero
(the pixel score of an unrelated image is about 0.3): "90 % of the best score" on the raw
scale would accept weights that changed almost nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from lorastudio.evaluation.scores import _thumb, similarity

RECOMMEND_FRACTION = 0.9
# The pixel score's spread over seeds on an unchanged model is about 0.01-0.03 (bench/lora_efficacy.py):
# a gain below 0.05 cannot be told from seed noise.
NO_EFFECT_GAIN = 0.05
# Trigger-free images must keep at least this similarity to the base's own (weight 0) images.
# Calibrated on the bundled base (pixel score): LoRAs trained with regularisation pictures, which
# keep the base's colour/shape accuracy within 10 points (bench/lora_efficacy.py), stay at
# 0.71-0.81 at weight 1; the same recipe without them falls to about 0.52.
PRESERVATION_BOUND = 0.7
# A step is "as good as the last" when its concept score is within this of the last step's.
STEP_TOLERANCE = 0.02


@dataclass(frozen=True)
class ImageScorer:
    """Scores generated images against reference images; `describe` goes into report.json."""

    name: str
    describe: str
    # (generated, references) -> one score per generated image (its best match)
    best_match: Callable[[Sequence[Image.Image], Sequence[Image.Image]], list[float]]
    # (a, b) -> one similarity per pair
    pairwise: Callable[[Sequence[Image.Image], Sequence[Image.Image]], list[float]]


def pixel_scorer() -> ImageScorer:
    def best_match(gens, refs):
        rt = [_thumb(r) for r in refs]
        return [max(similarity(_thumb(g), r) for r in rt) for g in gens]

    def pairwise(a, b):
        return [similarity(_thumb(x), _thumb(y)) for x, y in zip(a, b, strict=True)]

    return ImageScorer("pixel", "lorastudio.evaluation.scores: 0.5 * colour-histogram intersection (4x4x4 RGB bins) + "
                       "0.5 * (1 - mean |pixel difference| / 255) on 16x16 thumbnails; best match among the "
                       "training pictures, mean over images", best_match, pairwise)


def concept_by_weight(per_image: dict[float, list[float]]) -> dict[float, float]:
    return {w: float(np.mean(s)) for w, s in per_image.items()}


def recommend(concept: dict[float, float], preservation: dict[float, float], *,
              fraction: float = RECOMMEND_FRACTION, no_effect_gain: float = NO_EFFECT_GAIN,
              bound: float = PRESERVATION_BOUND) -> dict:
    """The recommendation block of report.json (weights are the sweep's, 0 is the base)."""
    base = concept[0.0]
    gains = {w: concept[w] - base for w in concept if w > 0}
    best_w = max(gains, key=lambda w: gains[w])
    best = gains[best_w]
    rule = (f"smallest weight whose concept gain over weight 0 reaches {fraction:.0%} of the best gain, "
            f"with base preservation >= {bound}; best gain < {no_effect_gain} means no effect")
    out = {"rule": rule, "best_weight": best_w, "best_gain": round(best, 4)}
    if best < no_effect_gain:
        return {**out, "verdict": "no effect", "recommended_weight": None,
                "reason": f"the best concept gain ({best:.3f}) is below {no_effect_gain}: the LoRA does not visibly "
                          f"move images towards the training pictures"}
    for w in sorted(gains):
        if gains[w] >= fraction * best and preservation.get(w, 1.0) >= bound:
            return {**out, "verdict": "recommended", "recommended_weight": w,
                    "reason": f"weight {w:g} reaches {gains[w] / best:.0%} of the best gain "
                              f"with preservation {preservation.get(w, 1.0):.3f}"}
    return {**out, "verdict": "changes the base", "recommended_weight": None,
            "reason": f"every weight that reaches {fraction:.0%} of the best gain changes the trigger-free "
                      f"images beyond the bound {bound}"}


def step_progress(per_step: dict[int, float], *, tolerance: float = STEP_TOLERANCE) -> dict:
    """Concept score of the previews at each step: the earliest step as good as the last one,
    and whether the score fell from its best (a sign of overfitting)."""
    if not per_step:
        return {"steps": {}, "note": "no step previews in samples/"}
    steps = sorted(per_step)
    last = steps[-1]
    earliest = next(s for s in steps if per_step[s] >= per_step[last] - tolerance)
    best = max(steps, key=lambda s: per_step[s])
    out = {"steps": {str(s): round(per_step[s], 4) for s in steps}, "last_step": last,
           "earliest_as_good_as_last": earliest, "best_step": best, "tolerance": tolerance}
    notes = []
    if earliest < last:
        notes.append(f"step {earliest} was as good as step {last}")
    if per_step[best] - per_step[last] > tolerance:
        notes.append(f"the score fell from {per_step[best]:.3f} at step {best} to {per_step[last]:.3f} at step "
                     f"{last}: a sign of overfitting")
    out["note"] = "; ".join(notes) or "the score rose until the last step"
    return out
