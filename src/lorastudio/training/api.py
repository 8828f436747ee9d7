"""Training as public steps: `prepare` -> `run` -> `export`, and `train(config, on_event)`, the
one-call API composed of them that the CLI, the job queue and the HTTP API call. The benchmark
runs `prepare` and then single steps; a caller that wants progress listens to `on_event`.

`prepare` numbers its own steps: find the base model, load it, resolve defaults, check the
dataset (every problem is reported before anything trains), lay out the version folder, set up.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lorastudio.core.atomic import atomic_path, atomic_write_text
from lorastudio.core.errors import DiskFullError, InvalidParameter
from lorastudio.core.paths import ModelsRoot
from lorastudio.models.devices import autocast_precision, pick_device
from lorastudio.training.config import TrainingConfig, training_config
from lorastudio.training.data import Item
from lorastudio.training.dataset.masks import mask_path_for
from lorastudio.training.events import EventSink, TrainingEvent, TrainingResult
from lorastudio.training.project import VersionDir, project_name, version_dir
from lorastudio.training.sampling import make_sampler

if TYPE_CHECKING:  # the loop imports torch; this module is imported by light entry points
    from lorastudio.models.catalog import ModelEntry
    from lorastudio.training.loop import LoopState, Trainer


def prepare_items(config: TrainingConfig, resolution: int, *, regularisation: bool = False,
                  images: Path | None = None):
    """Check the dataset (or the regularisation pictures) and return (source, items, report);
    raises DatasetError listing every problem. `images` replaces config.images (the captioned
    copy that `caption="auto"` makes)."""
    from lorastudio.training.dataset.checks import build_dataset, check_dataset
    from lorastudio.training.dataset.ingest import open_source

    dcfg = config.dataset_config(resolution, regularisation=regularisation)
    source = open_source(config.reg_images if regularisation else (images or config.images),
                         max_unzipped_bytes=dcfg.max_unzipped_bytes)
    try:
        report = check_dataset(source, dcfg)
        items = build_dataset(source, dcfg, skip_bad=config.skip_bad_images, report=report)
    except BaseException:
        source.close()  # a zip's extracted pictures must not outlive a failed check
        raise
    return source, items, report


PreviewMaker = Callable[..., Callable[[int], list[Path]]]  # (model, config, vdir, pipe) -> draw(step) -> paths


@dataclass
class PreparedRun:
    """What `prepare` set up, ready for `run`: the resolved config (every default filled in, as
    config.json records it), the loaded base model, the version folder and a set-up Trainer."""

    config: TrainingConfig
    trainer: Trainer
    entry: ModelEntry
    sha256: str | None
    items: list[Item]
    vdir: VersionDir
    name: str
    started: float
    emit: EventSink

    @property
    def accelerator(self):
        return self.trainer.acc


def train(config: TrainingConfig | dict, on_event: EventSink | None = None, *,
          should_stop: Callable[[], bool] | None = None, yield_point: Callable[[], None] | None = None,
          accelerator=None) -> TrainingResult:
    """The whole run in one call: `prepare`, `run`, `export`."""
    config = training_config(config)
    with disk_full_hint(config):
        prepared = prepare(config, on_event, should_stop=should_stop, yield_point=yield_point,
                           accelerator=accelerator)
        return export(prepared, run(prepared))


@contextlib.contextmanager
def disk_full_hint(config: TrainingConfig):
    """A full disk during any step says what can be freed and how to continue."""
    try:
        yield
    except DiskFullError as exc:
        # Every write went to a temporary name first: nothing incomplete is under a final name, and the
        # last complete checkpoint is still the one --resume continues from.
        raise DiskFullError(exc.path, f"free space on that disk (the cache/ and checkpoints/ folders of finished "
                                      f"versions under {config.projects_dir} can be deleted), then run again with "
                                      f"--resume to continue from the last complete checkpoint") from exc


def prepare(config: TrainingConfig | dict, on_event: EventSink | None = None, *,
            should_stop: Callable[[], bool] | None = None, yield_point: Callable[[], None] | None = None,
            accelerator=None, previews: PreviewMaker | None = make_sampler) -> PreparedRun:
    """Everything before the first step: find the base model, load it, resolve the family's
    defaults, check the dataset (every problem is reported before anything trains), lay out the
    version folder, copy the pictures into it and set up the Trainer (LoRA layers, optimizer,
    caches, resume). `previews(model, config, vdir, pipe)` makes the preview drawer the Trainer
    calls every `sample_every` steps and `export` calls at the end (None: no previews)."""
    config = training_config(config)
    emit = on_event or (lambda e: None)
    # 1. the base model must exist before anything else happens
    from lorastudio.models.catalog import Catalog

    catalog = Catalog(ModelsRoot.at(config.models_dir))
    entry = catalog.find_checkpoint(config.base)
    images = Path(config.images)
    if not images.exists():
        raise InvalidParameter("images", str(images), "no such folder or .zip file")
    if config.reg_images is not None and not Path(config.reg_images).exists():
        raise InvalidParameter("reg_images", str(config.reg_images), "no such folder or .zip file")

    # 1b. automatic captions, into a copy: the user's folder is never written to
    captioned = _auto_caption(config, emit) if config.caption == "auto" else None

    # 2. the model (its family decides the defaults and the dataset resolution)
    from accelerate import Accelerator

    from lorastudio.models.load_options import load_options
    from lorastudio.models.loader import load_model

    acc = accelerator or _accelerator(Accelerator, _precision(config, _weight_bytes(entry.path)))
    emit(TrainingEvent("log", message=f"loading {entry.name}"))
    # The base's SHA-256 (the latent cache's key, the LoRA's metadata) is computed once per file (the
    # catalog's hash cache keeps it), on another thread while the model loads: hashlib releases the
    # GIL, so a first run reads the file for the hash on the second core instead of before the load.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="base-sha256") as pool:
        hashing = pool.submit(catalog.sha256, entry.path) if entry.kind == "file" else None
        model = load_model(entry.path, load_options(catalog.root, device=str(acc.device), dtype=_base_dtype(acc)),
                           name=entry.name, sha256=None, say=lambda m: emit(TrainingEvent("log", message=m)))
        sha = model.sha256 = hashing.result() if hashing is not None else None
    family, pipe = model.family, model.pipe
    config = _resolve(config, family.training_defaults(pipe))

    # 3. every dataset problem, before training starts (a zip's extracted copy is removed on every path)
    with contextlib.ExitStack() as sources:
        if captioned is not None:
            sources.callback(shutil.rmtree, captioned, True)
        source, titems, report = prepare_items(config, config.resolution[0],
                                               images=captioned / "dataset" if captioned else None)
        sources.callback(source.close)
        emit(TrainingEvent("log", message=report.render()))
        reg_titems = []
        if config.reg_images is not None:
            reg_source, reg_titems, reg_report = prepare_items(config, config.resolution[0], regularisation=True)
            sources.callback(reg_source.close)
            emit(TrainingEvent("log", message="regularisation pictures:\n" + reg_report.render()))

        # 4. the version folder (decided by the main process; the others follow it)
        project = project_name(config.project, config.trigger)
        name = config.output_name or project
        if acc.is_main_process:
            vdir = version_dir(config.projects_dir, project, config.version, resume=config.resume)
            if vdir.root.exists() and not config.resume and any(vdir.root.iterdir()):
                raise InvalidParameter("version", vdir.root.name,
                                       f"{vdir.root} exists; pass --resume or another --version")
            if config.resume:
                _refuse_finished(vdir, name)
            vdir.make()
        acc.wait_for_everyone()
        if not acc.is_main_process:
            vdir = version_dir(config.projects_dir, project, config.version, resume=True)
        config = config.model_copy(update={"project": project, "version": vdir.root.name})
        items = _copy_dataset(titems, vdir.dataset, write=acc.is_main_process)
        items += _copy_dataset(reg_titems, vdir.reg, write=acc.is_main_process, regularisation=True)
        acc.wait_for_everyone()
    if acc.is_main_process:
        atomic_write_text(vdir.config, config.model_dump_json(indent=2))

    # 5. the trainer, set up
    from lorastudio.training.loop import Trainer

    trainer = Trainer(config, family, pipe, items, vdir, model_id=sha or str(entry.path), accelerator=acc,
                      on_event=emit, should_stop=should_stop, yield_point=yield_point,
                      sampler=previews(model, config, vdir, pipe) if previews is not None and config.previews
                      else None)
    trainer.setup()
    return PreparedRun(config, trainer, entry, sha, items, vdir, name, time.time(), emit)


def run(prepared: PreparedRun) -> LoopState:
    """The training steps, from the first (or the resumed checkpoint's) to the last; raises
    TrainingStopped when should_stop() turns true (the last checkpoint stays resumable)."""
    return prepared.trainer.run()


def export(prepared: PreparedRun, state: LoopState) -> TrainingResult:
    """The finished LoRA, as kohya's .safetensors (A1111/Forge/ComfyUI) and as diffusers/PEFT,
    the loss curve, and the final previews."""
    from lorastudio.training.export import kohya_metadata, write_kohya_lora
    from lorastudio.training.report import write_loss_curve

    config, trainer, vdir, items = prepared.config, prepared.trainer, prepared.vdir, prepared.items
    acc, family, pipe = trainer.acc, trainer.family, trainer.pipe
    acc.wait_for_everyone()
    lora_path = vdir.lora(prepared.name)
    samples: list[Path] = []
    if acc.is_main_process:
        sds = trainer.network.state_dicts()
        md = kohya_metadata(config=config, family=family, output_name=prepared.name, rank=config.rank,
                            alpha=config.alpha, base_name=prepared.entry.name, base_sha256=prepared.sha256,
                            started=prepared.started, finished=time.time(), steps=state.step,
                            epochs=max(1, state.step * config.grad_accum // max(1, trainer.batches_per_epoch)),
                            num_images=len({i.image_path for i in items if not i.regularisation}),
                            num_reg_images=len({i.image_path for i in items if i.regularisation}),
                            resolution=config.resolution[0],
                            captions=[i.caption for i in items if not i.regularisation],
                            mixed_precision=acc.mixed_precision)
        write_kohya_lora(lora_path, family.export_kohya(pipe, sds, alpha=config.alpha, rank=config.rank,
                                                        overrides=trainer.network.overrides), md)
        family.save_diffusers_lora(pipe, sds, vdir.diffusers)
        write_loss_curve(vdir.logs / "metrics.jsonl", vdir.logs / "loss.png")
        prepared.emit(TrainingEvent("log", state.step, trainer.total_steps, path=lora_path,
                                    message=f"saved {lora_path}"))
        if trainer.sampler:
            # Drawn after the LoRA is on disk: the file is there to use while the preview renders.
            samples = trainer.draw_previews(state.step)
    result = TrainingResult(vdir.root, lora_path, vdir.diffusers, vdir.config, samples, state.step,
                            state.losses[-1] if state.losses else None)
    # "saved" was said when the file was written; previews may have come since
    prepared.emit(TrainingEvent("done", state.step, trainer.total_steps, path=lora_path,
                                message=f"done: {state.step} steps, LoRA {lora_path}"))
    return result


def _refuse_finished(vdir, name: str) -> None:
    """--resume continues an interrupted version; a finished one keeps its LoRA untouched."""
    lora = vdir.lora(name)
    if lora.exists():
        project = vdir.root.parent.parent.name
        raise InvalidParameter(
            "resume", vdir.root.name,
            f"version {vdir.root.name} of {project} is finished ({lora} exists), so there is nothing to resume; "
            f"train again without --resume to start a new version, or pass --version with a new name")


def _auto_caption(config: TrainingConfig, emit) -> Path:
    """Copy the dataset into a temporary folder and caption the pictures without a caption there.

    The captions become part of the version's dataset copy (step 4 writes every trained caption
    beside its picture) and `config.json` records the models and thresholds used.
    """
    import tempfile

    from lorastudio.training.dataset.autocaption import caption_images_in, load_interrogators, plan_captions, write_captions
    from lorastudio.training.dataset.ingest import open_source

    options = config.caption_options
    models = load_interrogators(options, config.models_dir)  # a missing model fails before any copy
    staging = Path(tempfile.mkdtemp(prefix="lorastudio-autocaption-"))
    try:
        with open_source(config.images) as src:
            for f in src.files:
                dst = staging / "dataset" / f.rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f.path, dst)
        root = staging / "dataset"
        images = [(p, str(Path(config.images) / p.relative_to(root))) for p in caption_images_in(root)]
        plan = plan_captions(images, models, options, trigger=config.trigger)
        write_captions(plan)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    freq = ", ".join(f"{t} ({n})" for t, n in list(plan.tag_frequency().items())[:20])
    emit(TrainingEvent("log", message=f"captioned {len(plan.to_write)} picture(s), kept "
                                      f"{sum(e.action == 'keep' for e in plan.entries)} caption(s) as written; "
                                      f"tags: {freq or 'none'}"))
    for msg in plan.failures:
        emit(TrainingEvent("log", message=msg))
    return staging


def _precision(config: TrainingConfig, weight_bytes: int) -> str:
    if config.mixed_precision != "auto":
        return config.mixed_precision
    # bf16 on CPUs with AVX512-BF16/AMX too, for bases large enough that it pays (models/devices.py).
    return autocast_precision(pick_device("auto"), weight_bytes=weight_bytes)


def _weight_bytes(path: Path) -> int:
    """Bytes of a base's weights on disk: the file, or a diffusers folder's weight files."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.suffix in (".safetensors", ".bin") and f.is_file())


def _accelerator(accelerator_cls, precision: str):
    """A new Accelerator with `precision`. accelerate keeps one state per process and refuses a second
    precision in it; a server trains one run after another in its process, each with its own
    precision, so a state left by an earlier run with another precision is cleared first (the process
    group, if any, is kept: only the accelerator's part of the state goes)."""
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    return accelerator_cls(cpu=pick_device("auto") == "cpu", mixed_precision=precision)


def _base_dtype(acc) -> str:
    # The frozen base runs in the autocast precision; LoRA weights stay fp32 (network.add_lora).
    return {"bf16": "bfloat16", "fp16": "float16"}.get(acc.mixed_precision, "float32")


def _resolve(config: TrainingConfig, defaults: dict) -> TrainingConfig:
    update = {k: v for k, v in defaults.items() if getattr(config, k, None) is None}
    if config.steps is not None or config.epochs is not None:
        update.pop("steps", None)
    if update.get("train_text_encoder") is None and config.train_text_encoder is None:
        update["train_text_encoder"] = False
    if config.conv_dim is not None and config.conv_alpha is None:
        update["conv_alpha"] = 1.0  # kohya's networks/lora.py default when conv_dim is given alone
    if config.gradient_checkpointing is None:
        update["gradient_checkpointing"] = True
    if config.timestep_sampling is None and "timestep_sampling" in defaults:
        update["timestep_sampling"] = defaults["timestep_sampling"]
    resolved = config.model_copy(update=update)
    if resolved.te_lr is None:
        resolved = resolved.model_copy(update={"te_lr": resolved.lr})
    return resolved


def _copy_dataset(titems, folder: Path, *, write: bool = True, regularisation: bool = False) -> list[Item]:
    """Keep the pictures actually trained on beside the LoRA, so a version can be re-run or resumed."""
    out: list[Item] = []
    seen: dict[Path, Path] = {}
    if write and titems:
        folder.mkdir(parents=True, exist_ok=True)
    for ti in titems:
        src = Path(ti.image_path)
        dst = seen.get(src)
        if dst is None:
            # Names are made unique from the source order alone, so every process derives the same.
            dst = folder / src.name
            n = 1
            while dst in seen.values():
                dst = folder / f"{src.stem}-{n}{src.suffix}"
                n += 1
            if write:
                with atomic_path(dst) as tmp:
                    shutil.copyfile(src, tmp)
                atomic_write_text(dst.with_suffix(".txt"), ti.caption)
                if mask_path_for(src).is_file():  # the subject mask travels with its picture
                    with atomic_path(mask_path_for(dst)) as tmp:
                        shutil.copyfile(mask_path_for(src), tmp)
            seen[src] = dst
        out.append(Item(dst, ti.caption, ti.bucket.width, ti.bucket.height, ti.repeats, regularisation))
    return out
