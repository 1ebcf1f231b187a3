"""The one training loop: AdamW + cosine warmup, EMA, progress, TensorBoard, atomic checkpoints, exact resume.

Any policy module trains here if ``module(batch, generator) -> dict`` returns a dict with a scalar
``"loss"`` (plus any scalars to log) and it offers ``policy_type``, ``config_dict()`` and
``normalizer_state()``. A module may also offer ``export_state(state_dict) -> state_dict`` to choose
the inference weights a checkpoint holds (a distiller keeps only its student, an inverse-dynamics fit
its best-on-validation members), ``after_step(step)`` for work between an optimizer step and that step's
checkpoint (validation, best-weights selection: keep its state in buffers so a resume restores it) and
``checkpoint_extra() -> dict`` for fields written into each checkpoint's config; parameters with
``requires_grad=False`` are neither optimised nor EMA-averaged. All randomness of a step (batch
indices, diffusion noise and timesteps) comes from one ``torch.Generator`` whose state is
checkpointed, so a resumed run continues exactly as the uninterrupted run would have (tested bit
for bit).

Under ``torchrun`` (WORLD_SIZE > 1) the loop wraps the module in DistributedDataParallel (gloo on CPU,
nccl on CUDA); each rank draws its own batches from a rank-offset generator; rank 0 alone writes
checkpoints and logs.

Ctrl-C (SIGINT) in a single-process run finishes the current step, writes a checkpoint and raises
:class:`TrainingInterrupted`, which says how to continue (``--resume``); a second Ctrl-C stops at once.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastpolicy.train.config import TrainConfig
from fastpolicy.utils.checkpoint import (
    checkpoint_name,
    load_tensors,
    prune_checkpoints,
    read_config,
    resolve_checkpoint,
    save_checkpoint,
    write_latest,
)
from fastpolicy.utils.misc import resolve_device


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after a completed step; a checkpoint of that step was written."""

    def __init__(self, step: int, run_dir: Path) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint saved in {run_dir}. Rerun the same "
                         "command with --resume to continue from it")
        self.step, self.run_dir = step, run_dir


def _dist_info() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class Trainer:
    """Train ``policy`` on ``dataset`` (anything with ``__len__`` and ``sample_batch(indices)``)."""

    def __init__(
        self,
        policy: nn.Module,
        dataset: Any,
        config: TrainConfig,
        run_dir: str | os.PathLike,
        resume: bool = False,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.dataset = dataset
        self.extra_config = extra_config or {}
        self.rank, self.world = _dist_info()
        self.device = resolve_device(config.device)
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        self.policy = policy.to(self.device)
        self.model: nn.Module = self.policy
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.model = nn.parallel.DistributedDataParallel(
                self.policy, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        # Frozen parameters (a distillation teacher, an EMA target) are neither optimised nor averaged.
        self._trainable = [(n, p) for n, p in self.policy.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            [p for _, p in self._trainable],
            lr=config.lr,
            betas=(config.adam_beta1, 0.999),
            eps=1e-8,
            weight_decay=config.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambda)
        self.ema = None
        if config.ema:
            from diffusers.training_utils import EMAModel  # reuse diffusers' EMA (warm-up power schedule)

            self.ema = EMAModel(
                [p for _, p in self._trainable],
                decay=config.ema_max_decay,
                use_ema_warmup=True,
                inv_gamma=1.0,
                power=config.ema_power,
            )
        self.generator = torch.Generator().manual_seed(config.seed * 1000 + self.rank)
        self.step = 0
        self._resumed_loss: float | None = None
        self._running: float | None = None  # smoothed loss, saved with each checkpoint
        self._stop_requested = False
        if resume:
            self._try_resume()
        elif (self.run_dir / "latest").exists() and self.rank == 0:
            raise FileExistsError(
                f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --out"
            )
        if self.step > config.steps:
            raise ValueError(f"{self.run_dir} is already at step {self.step}, past --steps {config.steps}; "
                             f"pass --steps above {self.step} to train further")
        if config.warmup_steps >= config.steps - self.step > 0 and self.rank == 0 and self.step == 0:
            from fastpolicy.utils import FastpolicyWarning

            warnings.warn(f"--warmup-steps {config.warmup_steps} ≥ --steps {config.steps}: the learning rate "
                          "is still warming up when training ends (it never reaches --lr nor decays)",
                          FastpolicyWarning, stacklevel=2)

    def _lr_lambda(self, step: int) -> float:
        warm = self.config.warmup_steps
        if step < warm:
            return (step + 1) / warm
        if self.config.lr_schedule == "constant":
            return 1.0
        progress = (step - warm) / max(1, self.config.steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    # --- state ------------------------------------------------------------------------------------
    def _train_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in self.policy.state_dict().items()}
        opt = self.optimizer.state_dict()
        for idx, st in opt["state"].items():
            for name, value in st.items():
                tensors[f"optim.{idx}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
        tensors["rng.generator"] = self.generator.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        if self.ema is not None:
            for i, p in enumerate(self.ema.shadow_params):
                tensors[f"ema.{i}"] = p
        meta = {
            "step": self.step,
            "param_groups": opt["param_groups"],
            "scheduler": {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"},
            "ema_optimization_step": self.ema.optimization_step if self.ema is not None else None,
            "train_config": asdict(self.config),
            "world_size": self.world,
            "loss": self._running,
        }
        return tensors, meta

    def _inference_state(self) -> dict[str, torch.Tensor]:
        state = {k: v.detach().clone() for k, v in self.policy.state_dict().items()}
        if self.ema is not None:
            for (name, _), shadow in zip(self._trainable, self.ema.shadow_params):
                state[name] = shadow.detach().clone()
        return state

    def save(self) -> Path:
        tensors, meta = self._train_state()
        name = checkpoint_name(self.step)
        model_state = self._inference_state()
        if hasattr(self.policy, "export_state"):
            # a wrapper (e.g. a distiller holding teacher + student) saves only the policy it trains
            model_state = self.policy.export_state(model_state)
        path = save_checkpoint(
            self.run_dir / "checkpoints" / name,
            policy_type=self.policy.policy_type,
            policy_config=self.policy.config_dict(),
            model_state=model_state,
            normalizer_state=self.policy.normalizer_state(),
            step=self.step,
            train_tensors=tensors,
            train_meta=meta,
            extra={"train": self.extra_config,
                   **(self.policy.checkpoint_extra() if hasattr(self.policy, "checkpoint_extra") else {})},
        )
        write_latest(self.run_dir, name)
        prune_checkpoints(self.run_dir, self.config.keep_checkpoints)
        return path

    def _try_resume(self) -> None:
        try:
            ckpt = resolve_checkpoint(self.run_dir)
        except FileNotFoundError:
            return  # nothing to resume: start fresh
        config = read_config(ckpt)
        tensors = load_tensors(ckpt, "train_state.safetensors")
        meta = json.loads((ckpt / "train_state.json").read_text())
        model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        self.policy.load_state_dict(model_state)
        opt_state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                opt_state.setdefault(int(idx), {})[name] = value
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
        # The lambda itself is code, not state: it is rebuilt from the config, only counters are restored.
        self.scheduler.load_state_dict(
            {**meta["scheduler"], "lr_lambdas": [None] * len(self.optimizer.param_groups)}
        )
        if self.ema is not None:
            n = len(self.ema.shadow_params)
            self.ema.shadow_params = [tensors[f"ema.{i}"].to(self.device) for i in range(n)]
            self.ema.optimization_step = meta["ema_optimization_step"]
        gen = tensors["rng.generator"]
        if self.world > 1 and self.rank != 0:
            self.generator.manual_seed(self.config.seed * 1000 + self.rank + 7919 * config["step"])
        else:
            self.generator.set_state(gen)
        torch.set_rng_state(tensors["rng.torch"])
        self.step = int(config["step"])
        self._resumed_loss = meta.get("loss")

    # --- loop -------------------------------------------------------------------------------------
    def _batch(self) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, len(self.dataset), (self.config.batch_size,), generator=self.generator)
        batch = self.dataset.sample_batch(idx.numpy())
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self._stop_requested:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self._stop_requested = True

    def fit(self) -> dict[str, float]:
        """Run until ``config.steps``; checkpoints every ``checkpoint_every`` steps and at the end.

        On Ctrl-C (single process): the current step completes, a checkpoint is written and
        :class:`TrainingInterrupted` is raised.
        """
        catch_sigint = self.world == 1 and threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._request_stop) if catch_sigint else None
        try:
            return self._fit()
        finally:
            if catch_sigint:
                signal.signal(signal.SIGINT, previous)

    def _fit(self) -> dict[str, float]:
        from tqdm.auto import tqdm

        cfg = self.config
        writer = None
        if cfg.tensorboard and self.rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step)
            except ImportError:
                writer = None
        self.model.train()
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="train",
            disable=not cfg.progress or self.rank,
            dynamic_ncols=True,
        )
        logs: dict[str, float] = {}
        running = self._running = None
        after_step = getattr(self.policy, "after_step", None)
        while self.step < cfg.steps:
            if self._stop_requested:
                bar.close()
                if writer is not None:
                    writer.close()
                saved = (self.run_dir / "checkpoints" / checkpoint_name(self.step)).exists()
                if self.rank == 0 and not saved:
                    self.save()
                raise TrainingInterrupted(self.step, self.run_dir)
            batch = self._batch()
            out = self.model(batch, self.generator)
            loss = out["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {self.step}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.step([p for _, p in self._trainable])
            self.step += 1
            if after_step is not None:
                after_step(self.step)
            value = float(loss.detach())
            running = self._running = value if running is None else 0.98 * running + 0.02 * value
            logs = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in out.items()}
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                bar.set_postfix(loss=f"{running:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.1e}")
                if writer is not None:
                    for k, v in logs.items():
                        writer.add_scalar(f"train/{k}", v, self.step)
                    writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.step)
            if self.rank == 0 and (self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps):
                self.save()
        bar.close()
        if writer is not None:
            writer.close()
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
        if running is None:  # nothing left to train (a resumed run already at --steps)
            running = self._resumed_loss if self._resumed_loss is not None else float("nan")
        return {"loss": running, "step": self.step, **logs}
