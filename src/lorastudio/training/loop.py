"""The training loop: a `step()` plus callbacks, run under accelerate.

The same code runs on a CPU in fp32, on one GPU with bf16/fp16 autocast and gradient
checkpointing, and data-parallel on several processes (`accelerate launch` or
`--num-processes`): each process takes its slice of the global batch; accelerate averages
the gradients.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lorastudio.core import atomic
from lorastudio.core.atomic import disk_space_checked
from lorastudio.training.checkpoints import (TrainingState, capture_rng, latest_checkpoint, load_checkpoint,
                                             restore_rng, save_checkpoint)
from lorastudio.training.config import TrainingConfig
from lorastudio.training.data import Item, LatentCache, TextCache, epoch_batches, step_caption
from lorastudio.training.events import EventSink, TrainingEvent, TrainingStopped
from lorastudio.training.network import LoraNetwork, add_lora, lora_targets
from lorastudio.models.objectives import sample_generators
from lorastudio.training.optimizers import build_lr_scheduler, build_optimizer
from lorastudio.training.project import VersionDir


@dataclass
class LoopState:
    step: int = 0
    losses: list[float] = field(default_factory=list)
    smoothed: float | None = None


class Trainer:
    def __init__(self, config: TrainingConfig, family, pipe, items: list[Item], vdir: VersionDir, *,
                 model_id: str, accelerator, on_event: EventSink | None = None,
                 should_stop: Callable[[], bool] | None = None, yield_point: Callable[[], None] | None = None,
                 sampler: Callable[[int], list[Path]] | None = None):
        self.config, self.family, self.pipe, self.items, self.vdir = config, family, pipe, items, vdir
        self.acc = accelerator
        self.on_event = on_event or (lambda e: None)
        self.should_stop = should_stop or (lambda: False)
        self.yield_point = yield_point or (lambda: None)
        self.sampler = sampler
        self.model_id = model_id
        self.state = LoopState()
        world = accelerator.num_processes
        self.global_batch = config.batch_size * world
        self._epoch_order = (0, epoch_batches(items, self.global_batch, config.seed, 0))
        self.batches_per_epoch = len(self._epoch_order[1])
        self.total_steps = self._total_steps()

    # --- set-up -----------------------------------------------------------------------------
    def _total_steps(self) -> int:
        c = self.config
        per_epoch = max(1, math.ceil(self.batches_per_epoch / c.grad_accum))
        return c.steps if c.steps is not None else (c.epochs or 1) * per_epoch

    def setup(self) -> None:
        c, acc = self.config, self.acc
        # LoRA's initial A matrices come from the global RNG; seed it so a run depends only on its
        # config, not on what the process did before (loading a model draws random numbers too).
        torch.manual_seed(c.seed)
        for comp in self.pipe.components.values():
            # Frozen parts get no gradients at all (a text encoder that is not trained would
            # otherwise keep its gradients allocated for the whole run).
            if isinstance(comp, torch.nn.Module):
                comp.requires_grad_(False)
        modules = self.family.trainable_modules(self.pipe, text_encoders=bool(c.train_text_encoder))
        # Built before any preview swaps pipe.scheduler for a sampler.
        self.noise_schedule = self.family.noise_schedule(self.pipe)
        self.network: LoraNetwork = add_lora(modules, lora_targets(self.family, modules, c), rank=c.rank,
                                             alpha=c.alpha, dropout=c.dropout, conv_rank=c.conv_dim,
                                             conv_alpha=c.conv_alpha)
        if c.gradient_checkpointing and acc.device.type == "cuda":
            for m in modules.values():
                if hasattr(m, "enable_gradient_checkpointing"):
                    m.enable_gradient_checkpointing()
                elif hasattr(m, "gradient_checkpointing_enable"):
                    m.gradient_checkpointing_enable()
        groups = []
        for name in modules:
            lr = c.lr if name == self.family.denoiser_name else c.te_lr
            groups.append({"params": self.network.trainable_parameters(name), "lr": lr})
        self.optimizer = build_optimizer(c.optimizer, groups, lr=c.lr, weight_decay=c.weight_decay,
                                         device=acc.device.type)
        self.lr_scheduler = build_lr_scheduler(c.lr_scheduler, self.optimizer, warmup=c.warmup,
                                               total_steps=self.total_steps)
        self._prepare_caches()
        if c.resume:
            self._resume()
        names = list(modules)
        prepared = acc.prepare(*[modules[n] for n in names], self.optimizer, self.lr_scheduler)
        self.modules = dict(zip(names, prepared[:len(names)]))
        self.trainable = [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]
        self.optimizer, self.lr_scheduler = prepared[len(names)], prepared[len(names) + 1]

    def _prepare_caches(self) -> None:
        c = self.config
        dev = self.acc.device
        self.latents = LatentCache(self.vdir.cache, self.model_id, c.background)
        self._log("caching latents")
        with torch.no_grad():
            self.latents.fill(self.items, lambda px: self.family.encode_images(self.pipe, px.to(dev)))
        self.text = None
        if not c.train_text_encoder and c.cache_text_embeddings and not c.shuffle_tags:
            self.text = TextCache(self.vdir.cache, f"{self.model_id}|clip_skip=1")
            with torch.no_grad():
                for it in self.items:
                    self._encode_cached(it.caption)
                if c.caption_dropout > 0:
                    self._encode_cached("")
        self._offload_encoders()

    def _frozen_encoders(self) -> list[torch.nn.Module]:
        mods = [getattr(self.pipe, "vae", None)]
        if self.text is not None and not self.config.shuffle_tags:
            # Every caption the run can see is cached: the text encoders are not needed until sampling.
            mods += self.family.text_encoders(self.pipe)
        return [m for m in mods if m is not None]

    def _offload_encoders(self) -> None:
        # On a GPU the VAE and text encoders leave device memory once their outputs are cached.
        if self.acc.device.type == "cuda":
            for m in self._frozen_encoders():
                m.to("cpu")
            torch.cuda.empty_cache()

    def _reload_encoders(self) -> None:
        if self.acc.device.type == "cuda":
            for m in self._frozen_encoders():
                m.to(self.acc.device)

    def _encode_cached(self, caption: str) -> dict[str, torch.Tensor]:
        return self.text.get(caption, lambda caps: self.family.encode_captions(self.pipe, caps, clip_skip=1))

    def _resume(self) -> None:
        ckpt = latest_checkpoint(self.vdir.checkpoints)
        if ckpt is None:
            self._log("resume: no complete checkpoint yet, starting from step 0")
            return
        st = load_checkpoint(ckpt)
        self.network.load_state_dicts(st.lora)
        self.optimizer.load_state_dict(st.optimizer)
        self.lr_scheduler.load_state_dict(st.lr_scheduler)
        restore_rng(st.rng)
        self.state.step, self.state.losses = st.step, list(st.losses)
        for loss in st.losses:  # the smoothed loss continues where it was
            self.state.smoothed = loss if self.state.smoothed is None else 0.9 * self.state.smoothed + 0.1 * loss
        self._log(f"resumed from {ckpt.name}")

    # --- one optimisation step -----------------------------------------------------------------
    def micro_batches(self, step: int) -> list[list[int]]:
        """Global-batch indices for each accumulation micro-step of optimisation step `step`."""
        out = []
        for k in range(self.config.grad_accum):
            m = step * self.config.grad_accum + k
            epoch, pos = divmod(m, self.batches_per_epoch)
            if self._epoch_order[0] != epoch:  # one shuffle per epoch, not per step
                self._epoch_order = (epoch, epoch_batches(self.items, self.global_batch, self.config.seed, epoch))
            out.append(self._epoch_order[1][pos])
        return out

    def step(self, step: int) -> float:
        c, acc = self.config, self.acc
        total = 0.0
        micro = self.micro_batches(step)
        for k, global_idx in enumerate(micro):
            ids = list(range(len(global_idx)))[acc.process_index::acc.num_processes]
            local = [global_idx[j] for j in ids]
            if not local:
                continue
            latents, mask = self.latents.batch(local)
            latents = latents.to(acc.device)
            captions = [step_caption(self.items[i], c.seed, step, j, dropout=c.caption_dropout,
                                     shuffle=c.shuffle_tags, keep_tokens=c.keep_tokens) for i, j in zip(local, ids)]
            cond = self._conditioning(captions)
            gens = sample_generators(c.seed, step, k, ids)
            weights = None
            if any(self.items[i].regularisation for i in local):
                weights = torch.tensor([c.prior_loss_weight if self.items[i].regularisation else 1.0 for i in local],
                                       device=acc.device)
            with acc.autocast():
                loss = self.family.training_loss(self.pipe, self.modules, latents, cond, gens, c,
                                                 mask=mask if c.masked_loss else None, sample_weights=weights,
                                                 schedule=self.noise_schedule)
            acc.backward(loss / len(micro))
            total += float(loss.detach()) / len(micro)
        if c.max_grad_norm > 0:
            acc.clip_grad_norm_(self.trainable, c.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def _conditioning(self, captions: list[str]) -> dict[str, torch.Tensor]:
        if self.text is not None and not self.config.shuffle_tags:
            parts = [self._encode_cached(cap) for cap in captions]
            return {k: torch.stack([p[k] for p in parts]).to(self.acc.device) for k in parts[0]}
        if self.config.train_text_encoder:
            return self.family.encode_captions(self.pipe, captions, clip_skip=1)
        # Shuffled tags make nearly every caption new: caching them would only fill the disk.
        with torch.no_grad():
            return self.family.encode_captions(self.pipe, captions, clip_skip=1)

    # --- the run --------------------------------------------------------------------------------
    def run(self) -> LoopState:
        c, st = self.config, self.state
        self.tensorboard = _tensorboard_writer(self.vdir.logs) if self.acc.is_main_process else None
        self._train_mode()
        started = time.monotonic()
        first = st.step
        metrics = self.vdir.logs / "metrics.jsonl"
        while st.step < self.total_steps:
            if self.should_stop():
                self._checkpoint()
                raise TrainingStopped(f"stopped at step {st.step}; resume continues from there")
            loss = self.step(st.step)
            st.step += 1
            st.losses.append(loss)
            st.smoothed = loss if st.smoothed is None else 0.9 * st.smoothed + 0.1 * loss
            done = st.step - first
            rate = done / max(time.monotonic() - started, 1e-9)
            eta = (self.total_steps - st.step) / rate if rate > 0 else None
            lr = self.lr_scheduler.get_last_lr()[0]
            if self.acc.is_main_process:
                with disk_space_checked(metrics.parent), open(metrics, "ab") as fh:
                    row = {"step": st.step, "loss": loss, "smoothed": st.smoothed, "lr": lr}
                    atomic.write_all(fh, (json.dumps(row) + "\n").encode("utf-8"))
                if self.tensorboard is not None:
                    self.tensorboard.add_scalar("loss", loss, st.step)
                    self.tensorboard.add_scalar("lr", lr, st.step)
            self.on_event(TrainingEvent("progress", st.step, self.total_steps, loss=st.smoothed, lr=lr,
                                        it_per_s=rate, eta_s=eta))
            if c.save_every and st.step % c.save_every == 0 and st.step < self.total_steps:
                self._checkpoint()
            if c.sample_every and self.sampler and st.step % c.sample_every == 0 and st.step < self.total_steps:
                self.draw_previews(st.step)
            self.yield_point()
        if self.tensorboard is not None:
            self.tensorboard.close()
        return st

    def _checkpoint(self) -> None:
        self.acc.wait_for_everyone()
        if not self.acc.is_main_process:
            return
        path = save_checkpoint(self.vdir.checkpoints, TrainingState(
            self.state.step, self.network.state_dicts(), self.optimizer.state_dict(),
            self.lr_scheduler.state_dict(), capture_rng(), self.state.losses), keep=self.config.keep_checkpoints)
        self.on_event(TrainingEvent("checkpoint", self.state.step, self.total_steps, path=path,
                                    message=f"checkpoint {path.name}"))

    def draw_previews(self, step: int) -> list[Path]:
        """The sampler's previews at `step`, with the training RNG and modes left as they were."""
        if not self.acc.is_main_process:
            return []
        for m in self.modules.values():
            m.eval()
        rng = torch.get_rng_state()
        self._reload_encoders()
        # The frozen base is in the autocast precision while the LoRA layers stay float32: without
        # the training autocast their float32 output meets the reduced-precision VAE.
        with self.acc.autocast():
            paths = self.sampler(step)
        self._offload_encoders()
        self._train_mode()
        torch.set_rng_state(rng)  # previews must not change the training run
        for p in paths:
            self.on_event(TrainingEvent("sample", step, self.total_steps, path=p, message=f"sample {p.name}"))
        return paths

    def _train_mode(self) -> None:
        for m in self.modules.values():
            m.train()

    def _log(self, msg: str) -> None:
        self.on_event(TrainingEvent("log", self.state.step, self.total_steps, message=msg))


def _tensorboard_writer(folder: Path):
    """TensorBoard event files when tensorboard is installed; metrics.jsonl is written regardless."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(folder / "tensorboard"))
