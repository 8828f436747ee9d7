"""Random detector weights in the real files' layouts (lllyasviel/Annotators), for the tests and benches.

These networks have fixed architectures, so the weights are real-size (body_pose_model.pth: 52 M
numbers, 209 MB); the tests write them once per session.
"""

from __future__ import annotations

import torch


def random_body_pose_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The keys and shapes of body_pose_model.pth, He-scaled so six stages keep their maps in range."""
    from lorastudio.generation.preprocessors.openpose_net import BodyPoseNet

    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, t in BodyPoseNet().state_dict().items():
        std = (2.0 / t[0].numel()) ** 0.5 if t.ndim == 4 else 0.05
        state[key] = torch.randn(t.shape, generator=gen) * std
    return state
