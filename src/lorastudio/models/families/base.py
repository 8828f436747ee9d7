"""The one protocol every model family implements.

Everything that differs between SD 1.x, SDXL and FLUX (key names, configs, text encoders,
latent layout, samplers, LoRA naming, training targets) lives behind this interface in one
file per family. Callers never ask "is this FLUX?"; they ask the family.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

    from lorastudio.core.params import GenerationParams
    from lorastudio.core.samplers import SamplerChoice


@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    # Where config skeletons, VAE configs and converted .ckpt copies are written. Required: a
    # cache is always a folder the caller chose (models_dir/.lorastudio-cache), never a hidden one.
    cache_dir: Path
    device: str = "cpu"
    dtype: str = "float32"  # "float16" | "bfloat16" on GPUs
    text_encoder_dir: Path | None = None  # FLUX: where clip_l / t5xxl files live
    vae_dir: Path | None = None
    allow_pickle: bool = False


@dataclass
class Conditioning:
    """Keyword arguments for the diffusers pipeline call, built by the family."""

    kwargs: dict[str, Any] = field(default_factory=dict)


class ModelFamily(ABC):
    name: ClassVar[str]
    title: ClassVar[str]
    # Name written as `ss_base_model_version` / used in model cards.
    base_model_version: ClassVar[str]
    default_size: ClassVar[int]
    default_sampler: ClassVar[str] = "DPM++ 2M"
    default_cfg: ClassVar[float] = 7.0
    # Precision on GPUs; CPUs always run float32.
    gpu_dtype: ClassVar[str] = "float16"
    # The pipeline component that denoises ("unet", "transformer"): it gets the main learning
    # rate in training and sets the latents' dtype in generation.
    denoiser_name: ClassVar[str]
    # The pipeline's text-encoder components, in the pipeline's order (offloaded together once
    # their outputs are cached).
    text_encoder_names: ClassVar[tuple[str, ...]]
    # SAI model-spec entries written into LoRAs trained on this family.
    modelspec_architecture: ClassVar[str]
    modelspec_implementation: ClassVar[str]
    # `modelspec.prediction_type` (None: the key is left out).
    modelspec_prediction_type: ClassVar[str | None] = "epsilon"

    def preferred_dtype(self, device: str) -> str:
        """The compute precision on `device`: float32 on CPUs, `gpu_dtype` on accelerators."""
        return "float32" if device == "cpu" else self.gpu_dtype

    def denoiser(self, pipe: "DiffusionPipeline") -> "torch.nn.Module":
        """The pipeline's denoiser module (`denoiser_name`)."""
        return getattr(pipe, self.denoiser_name)

    def text_encoders(self, pipe: "DiffusionPipeline") -> list["torch.nn.Module"]:
        """The pipeline's text encoders (`text_encoder_names`) that are present."""
        return [m for m in (getattr(pipe, n, None) for n in self.text_encoder_names) if m is not None]

    def modelspec_fields(self) -> dict[str, str]:
        """The family's `modelspec.*` entries of a trained LoRA (architecture, implementation, prediction type)."""
        fields = {"modelspec.architecture": f"{self.modelspec_architecture}/lora",
                  "modelspec.implementation": self.modelspec_implementation}
        if self.modelspec_prediction_type is not None:
            fields["modelspec.prediction_type"] = self.modelspec_prediction_type
        return fields

    # --- recognising files -------------------------------------------------------------
    @abstractmethod
    def claims_checkpoint(self, keys: Collection[str]) -> bool:
        """True when a single-file checkpoint with these keys belongs to this family."""

    @abstractmethod
    def claims_folder(self, model_index: Mapping[str, Any]) -> bool:
        """True when a diffusers folder with this model_index.json belongs to this family."""

    def checkpoint_key_renames(self, keys: Collection[str]) -> dict[str, str]:
        """{old key: current key} for a single-file checkpoint of this family saved with outdated
        names; the loader serves such a file as a renamed copy. Empty: nothing to rename."""
        return {}

    @abstractmethod
    def claims_lora(self, shapes: Mapping[str, tuple[int, ...]]) -> bool:
        """True when a LoRA state dict (key -> shape) was made for this family."""

    def native_size(self, shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]) -> int:
        """The picture size a single-file checkpoint was made for, from its header alone."""
        return self.default_size

    # --- loading -----------------------------------------------------------------------
    @abstractmethod
    def load_checkpoint(self, path: Path, shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str],
                        options: LoadOptions) -> "DiffusionPipeline":
        """Load a single-file checkpoint fully offline."""

    @abstractmethod
    def load_folder(self, path: Path, options: LoadOptions) -> "DiffusionPipeline":
        """Load a diffusers folder fully offline."""

    @abstractmethod
    def replace_vae(self, pipe: "DiffusionPipeline", path: Path, options: LoadOptions) -> None:
        """Swap in a VAE file; raise ModelFileError naming the file when it does not fit."""

    # --- generation --------------------------------------------------------------------
    @abstractmethod
    def supports_sampler(self, choice: "SamplerChoice") -> bool: ...

    @abstractmethod
    def make_scheduler(self, base_config: Mapping[str, Any], choice: "SamplerChoice"):
        """A fresh scheduler for this sampler / schedule type, built from the checkpoint's own
        scheduler config (never from the previous call's, so one choice cannot leak into the next)."""

    @abstractmethod
    def encode_prompts(self, pipe: "DiffusionPipeline", prompt: str, negative_prompt: str, *,
                       clip_skip: int, cfg_scale: float, guidance: float) -> Conditioning:
        """Prompt embeddings (A1111 emphasis, chunks, BREAK) as pipeline keyword arguments."""

    def native_resolution(self, pipe: "DiffusionPipeline") -> int:
        """The side in pixels this checkpoint was trained at (what the CLI draws when no size is given)."""
        return self.default_size

    @abstractmethod
    def latent_shape(self, pipe: "DiffusionPipeline", width: int, height: int) -> tuple[int, ...]:
        """Shape of one image's initial noise, as the pipeline's `latents` argument expects."""

    def pack_latents(self, pipe: "DiffusionPipeline", latents: "torch.Tensor") -> "torch.Tensor":
        """Turn [batch, *latent_shape] noise into what the pipeline's `latents` argument takes."""
        return latents

    def sampler_label(self, choice: "SamplerChoice") -> str:
        """The sampler name written into infotexts (as the reference UI for this family writes it)."""
        return choice.sampler.name

    def infotext_fields(self, params: "GenerationParams") -> dict[str, Any]:
        """Family-specific entries for the PNG parameters text."""
        return {}

    def encode_images(self, pipe: "DiffusionPipeline", pixels: "torch.Tensor") -> "torch.Tensor":
        """pixels [B, 3, H, W] in [-1, 1] -> scaled latents (the VAE posterior's mean), for img2img and training."""
        from lorastudio.core.errors import InvalidParameter

        raise InvalidParameter("init_images", "<image>", f"img2img is not available for {self.title} models")

    def img2img_pipeline(self, pipe: "DiffusionPipeline", inpaint: bool) -> "DiffusionPipeline":
        """The img2img (inpaint=True: inpainting) pipeline sharing `pipe`'s modules: no weights are copied,
        and LoRAs or a VAE applied to `pipe` are in effect."""
        from lorastudio.core.errors import InvalidParameter

        raise InvalidParameter("init_images", "<image>", f"img2img is not available for {self.title} models")

    def composable_guidance(self, pipe: "DiffusionPipeline", weights: list[float], extra_conds):
        """A context manager under which the pipeline's guided prediction becomes A1111's composable
        one, uncond + cfg * sum(w_i * (cond_i - uncond)) (prompts with AND or a :weight).

        `weights`: one per distinct sub-prompt; the first is the text the pipeline itself was given.
        `extra_conds(call)`: the other sub-prompts' conditioning kwargs (as `encode_prompts` returns
        them) for denoiser call `call` (0-based). Families without classifier-free guidance refuse."""
        from lorastudio.core.errors import InvalidParameter

        raise InvalidParameter("prompt", "AND", f"composable prompts (AND, or a trailing :weight) are not "
                               f"available for {self.title} models; give a plain prompt")

    def is_inpainting_model(self, pipe: "DiffusionPipeline") -> bool:
        """True for a denoiser that takes the masked image and the mask as extra input channels
        (SD 1.x inpainting: 4 latent + 1 mask + 4 masked-image channels)."""
        return False

    def lora_state_dict_kwargs(self, pipe: "DiffusionPipeline") -> dict[str, Any]:
        """Extra keyword arguments for `pipe.lora_state_dict`, so a file is read as `load_lora_weights` reads it."""
        return {}

    # --- ControlNet ----------------------------------------------------------------------
    def claims_controlnet(self, shapes: Mapping[str, tuple[int, ...]]) -> bool:
        """True when a ControlNet state dict (key -> shape, `control_model.` prefix removed) is this family's."""
        return False

    def load_controlnet(self, path: Path, shapes: Mapping[str, tuple[int, ...]], pipe: "DiffusionPipeline",
                        options: LoadOptions, *, folder_config: Mapping[str, Any] | None = None):
        """The ControlNet module in `path` (safetensors; a diffusers folder's weights file when
        `folder_config` is given), on `pipe`'s device."""
        from lorastudio.core.errors import ModelFileError

        raise ModelFileError(path, f"ControlNets are not supported for {self.title} models")

    # Whether the ControlNet extension's control modes (prompt / ControlNet more important) apply:
    # they scale the residuals of a UNet ControlNet.
    controlnet_control_modes: bool = True

    def controlnet_image_argument(self, mode: str) -> str:
        """The keyword of the control picture in the family's ControlNet pipeline call for `mode`."""
        return "image" if mode == "txt2img" else "control_image"

    def controlnet_pipeline(self, pipe: "DiffusionPipeline", controlnets: list, mode: str) -> "DiffusionPipeline":
        """The diffusers ControlNet pipeline (mode "txt2img", "img2img" or "inpaint") sharing `pipe`'s modules."""
        from lorastudio.core.errors import InvalidParameter

        raise InvalidParameter("controlnet", "<unit>", f"ControlNet is not available for {self.title} models")

    def reference_style_fidelity(self, module: str, style_fidelity: float) -> float:
        """The style fidelity a reference unit (the extension's attention injection into a UNet: reference_only,
        reference_adain) uses on this family's denoiser; families without such a UNet refuse it by name."""
        from lorastudio.core.errors import InvalidParameter

        raise InvalidParameter("controlnet.module", module,
                               f"reference units are not available for {self.title} models")

    def textual_inversion_targets(self, pipe: "DiffusionPipeline") -> list[tuple[str | None, Any, Any]]:
        """(key in an embedding file, tokenizer, text encoder) per encoder that takes A1111 embeddings.

        key None means the single vector set of SD 1.x files (`string_to_param`, `emb_params`);
        SDXL files hold one set per encoder (`clip_l`, `clip_g`). Empty: embeddings are not used.
        """
        return []


class UnsupportedFamily(ModelFamily):
    """Marker base for recognised-but-unsupported formats (e.g. SD 2.x)."""


@dataclass(frozen=True)
class KohyaLoraRule:
    """The layers kohya's `networks.lora` wraps in one component, as kohya states it: every Linear
    and 1x1 Conv2d inside a module whose class is named in `blocks`; with `conv_dim` set, also
    every layer inside `conv_blocks` (3x3 convs at conv_dim, Linear / 1x1 at the rank: LoCon)."""

    blocks: tuple[str, ...]
    conv_blocks: tuple[str, ...] = ()


class TrainableFamily(ABC):
    """The per-architecture training contract (kohya's idea, without the `if is_xl` branches).

    Shapes: latents [B, C, h, w] as the VAE gives them (already scaled); conditioning is a dict
    of batch-first tensors from `encode_captions`.
    """

    @abstractmethod
    def training_preset(self, size: int) -> dict[str, Any]:
        """The family's values for TrainingConfig fields left as None (rank, alpha, lr, te_lr,
        steps, resolution…) on a base made for `size` px: what a run gets, and what the web form
        shows for a base before anything is loaded (the size then comes from the file's header)."""

    def training_defaults(self, pipe: "DiffusionPipeline") -> dict[str, Any]:
        """`training_preset` at the loaded checkpoint's own resolution."""
        return self.training_preset(self.native_resolution(pipe))  # type: ignore[attr-defined]

    @abstractmethod
    def trainable_modules(self, pipe: "DiffusionPipeline", *, text_encoders: bool) -> dict[str, "torch.nn.Module"]:
        """Component name -> module that gets LoRA layers (the denoiser first)."""

    @abstractmethod
    def lora_targets(self) -> dict[str, list[str]]:
        """Component name -> peft target_modules of the attention-only set."""

    def kohya_lora_rules(self) -> dict[str, KohyaLoraRule]:
        """Component name -> the rule kohya's trainer uses for it by default; a component without
        one trains its `lora_targets()`."""
        return {}

    @abstractmethod
    def encode_captions(self, pipe: "DiffusionPipeline", captions: list[str], *, clip_skip: int) -> dict[str, "torch.Tensor"]:
        """Captions -> conditioning tensors (batch-first)."""

    def noise_schedule(self, pipe: "DiffusionPipeline") -> Any:
        """The training noise schedule, built once per run from the pipeline as loaded (previews
        swap `pipe.scheduler` for samplers; training must not follow them). None: the family
        draws its timesteps without one (rectified flow)."""
        return None

    @abstractmethod
    def training_loss(self, pipe: "DiffusionPipeline", modules: dict[str, "torch.nn.Module"], latents: "torch.Tensor",
                      cond: dict[str, "torch.Tensor"], gens: list, config, mask=None,
                      sample_weights: "torch.Tensor | None" = None, *, schedule: Any) -> "torch.Tensor":
        """One batch's loss: noise the latents, predict, compare with the target.

        `schedule` is what `noise_schedule(pipe)` returned at the start of the run.
        `sample_weights` (one per sample, e.g. the prior-loss weight of regularisation pictures)
        multiply the per-sample losses before the batch mean."""

    @abstractmethod
    def export_kohya(self, pipe: "DiffusionPipeline", lora: dict[str, dict[str, "torch.Tensor"]], *, alpha: float,
                     rank: int, overrides: Mapping[str, Mapping[str, tuple[int, float]]] | None = None,
                     ) -> dict[str, "torch.Tensor"]:
        """peft state dicts per component -> the kohya-format LoRA A1111 / Forge / ComfyUI load.

        overrides: {component: {module path: (rank, alpha)}} for layers trained at another rank
        (kohya's conv_dim / conv_alpha)."""

    def save_diffusers_lora(self, pipe: "DiffusionPipeline", lora: dict[str, dict[str, "torch.Tensor"]],
                            folder: Path) -> Path:
        """Write the diffusers / PEFT-format LoRA that `pipe.load_lora_weights(folder)` reads.

        Every pipeline class saves its own components, so one implementation serves all families."""
        from lorastudio.models.diffusers_lora import save_diffusers_lora

        return save_diffusers_lora(type(pipe), pipe, lora, folder)
