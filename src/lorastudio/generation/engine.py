"""The generation engine: one loaded model, its LoRA state, and the calls everything uses.

The CLI, the HTTP API and the job queue all go through this class, so they behave the same.
It is not a global: the entry point builds one from StudioSettings and passes it along.
"""

from __future__ import annotations

import threading
from pathlib import Path

from lorastudio.core.errors import InvalidParameter
from lorastudio.core.hashes import lora_hash_for_infotext
from lorastudio.core.params import GenerationParams, Img2ImgOptions, validate_img2img_options, validate_params
from lorastudio.core.paths import ModelsRoot
from lorastudio.core.samplers import resolve_sampler
from lorastudio.core.settings import StudioSettings
from lorastudio.generation.outputs import dated_folder
from lorastudio.generation.txt2img import GenerationResult, ProgressFn, run_txt2img
from lorastudio.lora.activation import LoraState, activate, tags_to_active
from lorastudio.lora.embeddings import EmbeddingState, apply_embeddings, ti_hashes_field
from lorastudio.models.catalog import Catalog, ModelEntry
from lorastudio.models.devices import pick_device
from lorastudio.models.families.base import LoadOptions, ModelFamily
from lorastudio.models.load_options import family_of, load_options
from lorastudio.models.loaded import LoadedModel
from lorastudio.models.loader import load_model


class GenerationEngine:
    supports_hires = True  # the API's hires fields reach run_txt2img (generation/hires_fix.py)

    def __init__(self, settings: StudioSettings):
        self.settings = settings
        self.root = ModelsRoot.at(settings.models_dir)
        self.catalog = Catalog(self.root, include_bundled=settings.include_bundled)
        self.device = pick_device(settings.device)
        self._model: LoadedModel | None = None
        self._entry: ModelEntry | None = None
        self._lora = LoraState()
        self._ti = EmbeddingState()
        self._fast = None  # generation.fast_mode.FastMode of the loaded model, made at its first fast request
        self._controlnets: dict = {}  # (id of the loaded pipeline, file) -> (ControlNetModel, title)
        self._upscalers = None  # generation.upscalers.ImageUpscalers, made when first needed
        from lorastudio.generation.preprocessors.annotator_weights import AnnotatorCache

        # the tensors of the last ControlNet detector file read, shared by generations and /controlnet/detect
        self.annotator_cache = AnnotatorCache()
        self._lock = threading.RLock()
        self.interrupt_flag = threading.Event()

    # --- models -------------------------------------------------------------------------
    def options(self, family: ModelFamily | None = None) -> LoadOptions:
        """Load options for `family` (its preferred precision on this device when the setting is "auto")."""
        dtype = self.settings.dtype
        if dtype == "auto":
            dtype = family.preferred_dtype(self.device) if family is not None else "float32"
        return load_options(self.root, device=self.device, dtype=dtype, allow_pickle=self.settings.allow_pickle)

    def _options_for(self, path: Path) -> LoadOptions:
        # The precision is chosen before the weights are read: a model is loaded once, in the
        # family's dtype (bf16 for FLUX on a GPU), never loaded and then loaded again.
        if self.settings.dtype == "auto" and self.device != "cpu":
            return self.options(family_of(path, self.options()))
        return self.options()

    def default_checkpoint(self) -> ModelEntry:
        return self.catalog.default_checkpoint(allow_pickle=self.settings.allow_pickle)

    @property
    def model(self) -> LoadedModel | None:
        return self._model

    def load(self, ref: str | None = None, vae: str | None = None) -> LoadedModel:
        with self._lock:
            entry = self.catalog.find_checkpoint(ref) if ref else (self._entry or self.default_checkpoint())
            if self._model is None or self._entry is None or entry.path != self._entry.path:
                sha = self.catalog.sha256(entry.path) if entry.kind == "file" else None
                self._model = None  # free the old one before loading the next
                self._lora = LoraState()
                self._ti = EmbeddingState()
                self._fast = None
                self._model = load_model(entry.path, self._options_for(entry.path), name=entry.name, sha256=sha)
                self._entry = entry
            self._set_vae(vae)
            return self._model

    def _set_vae(self, vae: str | None) -> None:
        model = self._model
        if vae in (None, "", "Automatic", "None"):
            if model.own_vae is not None:
                # Back to the checkpoint's own VAE, kept aside when it was replaced: same module, same pixels.
                model.pipe.vae, model.own_vae = model.own_vae, None
                model.vae_name = model.vae_sha256 = None
            return
        ventry = self.catalog.find_vae(vae)
        if ventry.name == model.vae_name:
            return
        own = model.own_vae or model.pipe.vae
        model.family.replace_vae(model.pipe, ventry.path, self.options(model.family))
        model.own_vae = own
        model.vae_name = ventry.name
        model.vae_sha256 = self.catalog.sha256(ventry.path)

    # --- generation ---------------------------------------------------------------------
    def txt2img(self, params: GenerationParams | dict, *, save: bool = True, on_progress: ProgressFn | None = None,
                outdir: Path | None = None, infotext_extra: dict | None = None,
                controlnet: list | None = None) -> GenerationResult:
        params = self._with_styles(validate_params(params))
        resolve_sampler(params.sampler, params.scheduler)  # a misspelt sampler fails before any model loads
        if params.dynamic_prompts != "off":
            from lorastudio.generation.dynamic_prompts import run_dynamic

            return run_dynamic(self, params, save=save, on_progress=on_progress, outdir=outdir)
        with self._lock:
            self.interrupt_flag.clear()
            model = self.load(params.model, params.vae)
            folder = dated_folder(outdir or self.settings.outdir, "txt2img") if save else None
            short = self.catalog.short_hash(self._entry) if self._entry else None
            control = self._control_plan(controlnet, params)
            return run_txt2img(model, params, activate_loras=self._activate_loras, model_hash=short,
                               save_to=folder, on_progress=on_progress, should_stop=self.interrupt_flag.is_set,
                               prepare_prompts=self._prompt_preparer(infotext_extra), control=control,
                               upscalers=self.image_upscalers(),
                               fast=self.fast_mode() if params.fast else None)

    def img2img(self, params: GenerationParams | dict, init_images: list, mask=None, *,
                options: Img2ImgOptions | dict | None = None, save: bool = True,
                on_progress: ProgressFn | None = None, outdir: Path | None = None,
                controlnet: list | None = None) -> GenerationResult:
        """img2img (inpainting when `mask` is given: white = repaint) with A1111's semantics."""
        params = self._with_styles(validate_params(params))
        options = validate_img2img_options(options)
        resolve_sampler(params.sampler, params.scheduler)
        if not init_images:
            raise InvalidParameter("init_images", [], "img2img needs at least one init image")
        from lorastudio.generation.img2img import run_img2img

        with self._lock:
            self.interrupt_flag.clear()
            model = self.load(params.model, params.vae)
            folder = dated_folder(outdir or self.settings.outdir, "img2img") if save else None
            short = self.catalog.short_hash(self._entry) if self._entry else None
            control = self._control_plan(controlnet, params, init_image=init_images[0], mask=mask)
            return run_img2img(model, params, list(init_images), mask=mask, options=options,
                               activate_loras=self._activate_loras, model_hash=short, save_to=folder,
                               on_progress=on_progress, should_stop=self.interrupt_flag.is_set,
                               prepare_prompts=self._apply_embeddings, control=control,
                               fast=self.fast_mode() if params.fast else None)

    def fast_mode(self):
        """The loaded model's fast-mode state (its denoiser copy and prompt-encoding cache)."""
        from lorastudio.generation.fast_mode import FastMode, levers_for

        if self._fast is None:
            self._fast = FastMode(levers_for(self.device, self.settings.fast_compile))
        return self._fast

    def image_upscalers(self):
        """The upscalers of the models folder (hires fix, Extras): one list, loaded models kept."""
        from lorastudio.generation.upscalers import ImageUpscalers

        made = self._upscalers
        if made is None or (made.models_root, made.allow_pickle) != (self.root.root, self.settings.allow_pickle):
            self._upscalers = ImageUpscalers(self.root.root, allow_pickle=self.settings.allow_pickle,
                                             device=self.device)
        return self._upscalers

    # --- ControlNet ------------------------------------------------------------------------
    def _control_plan(self, units: list | None, params: GenerationParams, init_image=None, mask=None):
        from lorastudio.generation.controlnet_units import ControlNetUnit, prepare_control

        if not units:
            return None
        units = [u if isinstance(u, ControlNetUnit) else ControlNetUnit.model_validate(u) for u in units]
        return prepare_control(units, width=params.width, height=params.height, cfg=params.cfg_scale > 1,
                               load=self._load_controlnet, models_root=self.root.root, init_image=init_image,
                               mask=mask, allow_pickle=self.settings.allow_pickle, device=self.device,
                               annotator_cache=self.annotator_cache)

    def _load_controlnet(self, ref: str):
        """(ControlNetModel, "name [hash]") for the loaded model; kept while that model stays loaded."""
        from lorastudio.generation.controlnet_units import controlnet_title
        from lorastudio.models.controlnet import find_controlnet, load_controlnet

        model = self._model
        entry = find_controlnet(self.root.root, ref)
        cache = self._controlnets
        key = (id(model.pipe), entry.path)
        if key not in cache:
            for k in [k for k in cache if k[0] != id(model.pipe)]:
                del cache[k]  # those of a model no longer loaded
            cache[key] = (load_controlnet(entry.path, model.family, model.pipe, self.options(model.family)),
                          controlnet_title(entry.path))
        return cache[key]

    def wildcards_dir(self) -> Path:
        return self.settings.wildcards_dir or Path(self.settings.models_dir) / "wildcards"

    def _prompt_preparer(self, infotext_extra: dict | None):
        if not infotext_extra:
            return self._apply_embeddings

        def prepare(prompt: str, negative: str):
            prompt, negative, extra = self._apply_embeddings(prompt, negative)
            return prompt, negative, {**extra, **infotext_extra}
        return prepare

    def prompt_styles(self) -> dict:
        from lorastudio.core.styles import load_styles

        return load_styles(self.settings.styles_file)

    def _with_styles(self, params: GenerationParams) -> GenerationParams:
        """A1111 applies styles before anything else: the infotext holds the styled prompt."""
        if not params.styles:
            return params
        from lorastudio.core.styles import apply_styles

        prompt, negative = apply_styles(params.prompt, params.negative_prompt, params.styles, self.prompt_styles(),
                                        str(self.settings.styles_file))
        return params.model_copy(update={"prompt": prompt, "negative_prompt": negative, "styles": []})

    def _activate_loras(self, tags):
        model = self._model
        active = tags_to_active(tags, self.catalog.find_lora,
                                lambda p: lora_hash_for_infotext(p, self.catalog.hashes))
        activate(model.pipe, model.family, active, self._lora, fuse=self.settings.lora_mode == "fused",
                 allow_pickle=self.settings.allow_pickle, keep_loaded=self.settings.lora_cache_size)
        return active

    def _apply_embeddings(self, prompt: str, negative: str):
        model = self._model
        (prompt, negative), used = apply_embeddings(
            model.pipe, model.family, [prompt, negative], self.catalog.embeddings(), self._ti,
            hash_of=self.catalog.sha256, allow_pickle=self.settings.allow_pickle)
        return prompt, negative, {"TI hashes": ti_hashes_field(used)}

    def interrupt(self) -> None:
        self.interrupt_flag.set()
