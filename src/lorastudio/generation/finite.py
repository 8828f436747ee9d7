"""A NaN or an infinity during generation is an error, never a saved black picture.

diffusers turns a non-finite image into black pixels (NaN cast to uint8 is 0) and returns as
if all went well; the checks here stop the run instead, with what to change. They cost one
reduction per step, nothing next to a denoiser call.
"""

from __future__ import annotations

import numpy as np
import torch

from lorastudio.core.errors import NonFiniteResult

_HINT = ("a LoRA or emphasis weight overflows the model, or this precision is too narrow for it; "
         "lower the weights, or generate in float32")


def check_latents(latents, step: int) -> None:
    if latents is not None and not bool(torch.isfinite(latents).all()):
        raise NonFiniteResult(f"the latents became NaN or infinite at step {step}: {_HINT}")


def check_images(images: np.ndarray) -> None:
    if not np.isfinite(images).all():
        raise NonFiniteResult(f"the decoded image holds NaN or infinite values: {_HINT}")


def finite_pil(pipe, images: np.ndarray) -> list:
    """The pipeline's "np" output as PIL images, as its "pil" output would be, once known finite."""
    check_images(images)
    return pipe.image_processor.numpy_to_pil(images)
