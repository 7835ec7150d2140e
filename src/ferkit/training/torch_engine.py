"""``ferkit train --engine torch``: train ``ferkit_cnn`` with PyTorch, for GPUs without TensorFlow.

The Keras engine (:mod:`ferkit.train`) is the reference. This engine exists for machines
whose accelerator has PyTorch but no TensorFlow (a rented GPU box): it trains a module that
mirrors :func:`ferkit.models.keras_nets.build_ferkit_cnn` layer for layer, with the same settings
(augmentation, label smoothing, AdamW or SGD with decoupled weight decay, warm-up + cosine
schedule, shuffled or balanced epochs from the same seeds, mixup, class weights, soft
labels), and writes the same self-describing run folder. The best weights are stored under
the Keras layer names (``checkpoints/best.weights.npz``), so the run becomes an ordinary
Keras run: :func:`ferkit.training.finish.finish_now` (``ferkit train --finish``) rebuilds
``checkpoints/best.keras`` from them and calibrates it, on any machine with Keras.

The whole training set lives on the device as ``uint8`` and augmentation runs there on
whole batches (one affine warp for flip, rotation, zoom and translation, then brightness,
contrast and random erasing), so a small CNN is not starved by a CPU input pipeline.
Every epoch reseeds its shuffling, augmentation and dropout from ``seed`` and the epoch
number, and ``checkpoints/last.pt`` holds the weights and optimizer state after each
epoch, so ``--resume`` continues where a run stopped.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ferkit.data.dataset import Split
from ferkit.extras import import_keras, import_torch
from ferkit.models.torch_net import (
    build_torch_model,
    load_torch_from_keras_weights,
    save_keras_weights,
)
from ferkit.training import sampling
from ferkit.training.config import TrainConfig, TrainResult
from ferkit.training.epochs import EpochLoop
from ferkit.training.finish import finish_now
from ferkit.training.run_folder import (
    BEST_WEIGHTS,
    LAST_TORCH_CHECKPOINT,
    load_run_data,
    open_run,
    removed_on_failure,
    unloadable_checkpoint,
    verify_checkpoint,
    write_json,
    write_run_config,
)
from ferkit.training.schedule import learning_rate_at

logger = logging.getLogger(__name__)


KERAS_ADAM_EPSILON = 1e-7


def check_supported(config: TrainConfig) -> None:
    """Refuse settings the torch engine does not implement, naming the alternative."""
    arch = config.model.get("arch", "ferkit_cnn")
    problems = []
    if arch != "ferkit_cnn":
        problems.append(f"arch {arch!r} (only ferkit_cnn)")
    if config.distribute != "none":
        problems.append(f"distribute {config.distribute!r}")
    if config.init_from and not _torch_init_weights(config.init_from):
        problems.append(
            f"init_from {config.init_from!r} (only a torch-engine run or its best.weights.npz)"
        )
    if config.fine_tune_epochs:
        problems.append("fine_tune_epochs")
    if problems:
        raise ValueError(
            "the torch engine does not support " + ", ".join(problems) + "; use --engine keras"
        )


def _torch_init_weights(source: str | Path) -> Path | None:
    """The Keras-layout weights file an ``init_from`` names: a torch-engine run folder or
    its ``best.weights.npz``; None for anything else."""
    source = Path(source)
    if source.suffix == ".npz" and source.is_file():
        return source
    if (source / BEST_WEIGHTS).is_file():
        return source / BEST_WEIGHTS
    return None


@functools.cache
def _corruption_constants(side: int, device: Any) -> dict[str, Any]:
    """The corruption matrices for ``side`` px on ``device``, made once."""
    from ferkit.models import corruption

    torch = import_torch()
    return {
        name: torch.as_tensor(value, device=device)
        for name, value in corruption.constants(side).items()
    }


def augment_batch(images: Any, augment: Any, generator: Any) -> Any:
    """Random training augmentation of a float NCHW batch in 0..255, on its device."""
    torch = import_torch()
    from torch.nn import functional

    n, _, height, width = images.shape
    device = images.device

    def uniform(low: float, high: float, *shape: int) -> Any:
        return low + (high - low) * torch.rand(shape or (n,), generator=generator, device=device)

    if augment.flip or augment.rotate_degrees or augment.zoom or augment.translate:
        angle = uniform(-1, 1) * math.radians(augment.rotate_degrees)
        scale = 1.0 + uniform(-1, 1) * augment.zoom  # >1 samples a wider area: zoom out
        flip = (
            torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
            if augment.flip
            else torch.ones(n, device=device)
        )
        shift_x = uniform(-1, 1) * 2 * augment.translate  # the side is 2 in grid units
        shift_y = uniform(-1, 1) * 2 * augment.translate
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        theta = torch.stack(
            [
                torch.stack([cos * flip, -sin, shift_x], dim=1),
                torch.stack([sin * flip, cos, shift_y], dim=1),
            ],
            dim=1,
        )
        grid = functional.affine_grid(theta, list(images.shape), align_corners=False)
        images = functional.grid_sample(
            images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )
    if augment.brightness:
        delta = uniform(-1, 1) * augment.brightness * 255.0
        images = (images + delta[:, None, None, None]).clamp(0, 255)
    if augment.contrast:
        factor = 1.0 + uniform(-1, 1) * augment.contrast
        mean = images.mean(dim=(2, 3), keepdim=True)
        images = ((images - mean) * factor[:, None, None, None] + mean).clamp(0, 255)
    if augment.sharpness:
        images = sharpen(images, 2 * uniform(*augment.sharpness_range()))
    if augment.corruption:
        from ferkit.models import corruption

        constants = _corruption_constants(height, device)
        draws = torch.rand((n, corruption.DRAWS), generator=generator, device=device)
        noise = torch.randn(images.shape, generator=generator, device=device)
        images = corruption.corrupt(
            torch, images, draws, noise, augment.corruption, constants, channels_last=False
        )
    if augment.erasing:
        chosen = uniform(0, 1) < augment.erasing
        area = uniform(0.02, 0.15) * height * width
        aspect = torch.exp(uniform(math.log(0.3), math.log(3.3)))
        box_h = torch.sqrt(area * aspect).clamp(1, height)
        box_w = torch.sqrt(area / aspect).clamp(1, width)
        top = uniform(0, 1) * (height - box_h)
        left = uniform(0, 1) * (width - box_w)
        rows = torch.arange(height, device=device)[None, :, None]
        cols = torch.arange(width, device=device)[None, None, :]
        inside = (
            (rows >= top[:, None, None])
            & (rows < (top + box_h)[:, None, None])
            & (cols >= left[:, None, None])
            & (cols < (left + box_w)[:, None, None])
            & chosen[:, None, None]
        )
        noise = torch.rand(images.shape, generator=generator, device=device) * 255.0
        images = torch.where(inside[:, None], noise, images)
    return images


def sharpen(images: Any, amount: Any) -> Any:
    """Keras's ``RandomSharpness`` at a given ``amount`` per image (twice its factor): 0
    gives the 3x3-smoothed image, 1 the image, 2 the image pushed away from its smoothing."""
    torch = import_torch()
    from torch.nn import functional

    channels = images.shape[1]
    kernel = torch.full((3, 3), 1.0 / 13.0, device=images.device)
    kernel[1, 1] = 5.0 / 13.0
    smoothed = functional.conv2d(
        images, kernel.expand(channels, 1, 3, 3), padding=1, groups=channels
    )
    return (images + (1 - amount[:, None, None, None]) * (smoothed - images)).clamp(0, 255)


def _soft_cross_entropy(logits: Any, targets: Any, smoothing: float) -> Any:
    """Per-face categorical cross-entropy with Keras's label smoothing."""
    torch = import_torch()

    if smoothing:
        targets = targets * (1 - smoothing) + smoothing / targets.shape[1]
    return -(targets * torch.log_softmax(logits.float(), dim=1)).sum(dim=1)


def evaluate_torch(
    module: Any, images: Any, targets: Any, smoothing: float, batch_size: int = 1024
) -> tuple[float, float, np.ndarray]:
    """Accuracy, mean loss and logits of ``module`` in float32 on device tensors."""
    torch = import_torch()

    module.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].permute(0, 3, 1, 2).float()
            outputs.append(module(batch.contiguous(memory_format=torch.channels_last)).float())
    logits = torch.cat(outputs)
    loss = _soft_cross_entropy(logits, targets, smoothing).mean()
    accuracy = (logits.argmax(1) == targets.argmax(1)).float().mean()
    return float(accuracy), float(loss), logits.cpu().numpy()


def train_torch(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    time_budget: float | None = None,
    device: str | None = None,
    stop_after_epochs: int | None = None,
) -> TrainResult:
    """Train (or resume) a ``ferkit_cnn`` run with PyTorch; see the module docstring.

    Args:
        config: settings; on resume the run's own ``config.yaml`` is used.
        run_dir: the run folder to create, or to continue with ``resume``.
        time_budget: seconds this call may train. After the second epoch the planned
            epochs shrink to what fits (the cosine schedule is fitted to the new length
            and ``config.yaml`` rewritten); an epoch that would overrun is not started.
        device: ``cuda``, ``cpu``, ...; default the first GPU, else the CPU.
        stop_after_epochs: end this call after that many epochs (to test resuming).
    """
    torch = import_torch()
    budget = _TimeBudget(time_budget)
    run_dir = Path(run_dir)
    config, state, finished = open_run(config, run_dir, resume, overwrite)
    if finished is not None:
        return finished
    config.engine = "torch"
    config.validate()
    check_supported(config)
    with removed_on_failure(run_dir, resume):
        run = _set_up(torch, config, run_dir, resume, state, device)
    if resume:
        checkpoint = verify_checkpoint(run_dir, state, LAST_TORCH_CHECKPOINT)
        _load_last_checkpoint(torch, run, checkpoint, state)
    state["trained_on"] = run.hardware
    print(f"{run.hardware}: {run.parameter_count:,} parameters, "
          f"{len(run.train_images)} train faces", flush=True)  # fmt: skip
    loop = EpochLoop(run_dir, config, state, stop_after_epochs)
    while loop.pending() and budget.allows(loop, run_dir):
        row = _train_one_epoch(torch, run, loop.epoch)
        budget.last_epoch_seconds = row["seconds"]
        interrupted = loop.end_epoch(
            row,
            lambda path: save_keras_weights(run.module, path),
            BEST_WEIGHTS,
            lambda path: torch.save(
                {"model": run.module.state_dict(), "optimizer": run.optimizer.state_dict()}, path
            ),
            LAST_TORCH_CHECKPOINT,
        )
        if interrupted is not None:
            return interrupted
    return _finish(run_dir, state)


@dataclass
class _TorchRun:
    """What the epochs of a torch-engine run need, on its device."""

    config: TrainConfig
    module: Any
    optimizer: Any
    parameters: list[Any]
    train_images: Any
    train_targets: Any
    train_split: Split
    val_images: Any
    val_targets: Any
    class_weight: Any
    augment: Any
    device: str
    hardware: str

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_images) / self.config.batch_size)


def _set_up(
    torch: Any,
    config: TrainConfig,
    run_dir: Path,
    resume: bool,
    state: dict[str, Any],
    device: str | None,
) -> _TorchRun:
    """Load the run's data onto the device and build the module and its optimizer."""
    data, train_split, val_split, model_config = load_run_data(config, run_dir, resume, state)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(config.seed)
    module = build_torch_model(model_config).to(device).to(memory_format=torch.channels_last)
    parameters = list(module.parameters())
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            parameters, lr=config.learning_rate, momentum=0.9, nesterov=True
        )
    else:
        optimizer = torch.optim.Adam(parameters, lr=config.learning_rate, eps=KERAS_ADAM_EPSILON)
    if config.init_from and not resume:
        source = _torch_init_weights(config.init_from)
        load_torch_from_keras_weights(module, source)
        write_json(run_dir / "init.json", {"source": str(source)})
    weights = None
    if config.class_weighting == "balanced":
        table = sampling.class_weights(train_split.labels, len(data.classes))
        weights = torch.tensor([table[i] for i in range(len(table))], device=device)
    on_gpu = device.startswith("cuda")
    hardware = f"1 {torch.cuda.get_device_name()} GPU" if on_gpu else f"{os.cpu_count()} CPU cores"

    def on_device(array: np.ndarray) -> Any:
        return torch.from_numpy(array).to(device)

    return _TorchRun(
        config=config,
        module=module,
        optimizer=optimizer,
        parameters=parameters,
        train_images=on_device(train_split.images),
        train_targets=on_device(sampling.split_targets(train_split, config.soft_labels)),
        train_split=train_split,
        val_images=on_device(val_split.images),
        val_targets=on_device(sampling.split_targets(val_split, config.soft_labels)),
        class_weight=weights,
        augment=model_config.augment,
        device=device,
        hardware=f"{hardware}, torch engine (PyTorch {torch.__version__})",
    )


def _load_last_checkpoint(
    torch: Any, run: _TorchRun, checkpoint: Path | None, state: dict[str, Any]
) -> None:
    if checkpoint is None:
        return
    try:
        saved = torch.load(checkpoint, map_location=run.device)
        run.module.load_state_dict(saved["model"])
        run.optimizer.load_state_dict(saved["optimizer"])
    except Exception as error:
        raise unloadable_checkpoint(checkpoint, state, error) from error


def _train_one_epoch(torch: Any, run: _TorchRun, epoch: int) -> dict[str, float]:
    """Train one epoch and validate; returns its history row."""
    config = run.config
    seed = sampling.epoch_seed(config.seed, epoch)
    torch.manual_seed(seed)
    generator = torch.Generator(device=run.device)
    generator.manual_seed(seed)
    order = sampling.epoch_order(run.train_split, config, seed)
    run.module.train()
    loss_sum = torch.zeros((), device=run.device)
    correct = torch.zeros((), device=run.device)
    started = time.perf_counter()
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if run.device.startswith("cuda")
        else torch.autocast("cpu", enabled=False)
    )
    for step in range(run.steps_per_epoch):
        chosen = order[step * config.batch_size : (step + 1) * config.batch_size]
        images, targets = _batch(torch, run, chosen, generator, seed, step)
        rate = float(
            learning_rate_at(config, epoch * run.steps_per_epoch + step, run.steps_per_epoch)
        )
        for group in run.optimizer.param_groups:
            group["lr"] = rate
        with autocast:
            logits = run.module(images)
        losses = _soft_cross_entropy(logits, targets, config.label_smoothing)
        if run.class_weight is not None:
            losses = losses * run.class_weight[targets.argmax(1)]
        loss = losses.mean()
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.weight_decay:  # decoupled, before the update, as Keras does
            with torch.no_grad():
                torch._foreach_mul_(run.parameters, 1.0 - rate * config.weight_decay)
        run.optimizer.step()
        loss_sum += loss.detach() * len(chosen)
        correct += (logits.detach().argmax(1) == targets.argmax(1)).sum()
    val_accuracy, val_loss, _ = evaluate_torch(
        run.module, run.val_images, run.val_targets, config.label_smoothing
    )
    return {
        "epoch": epoch + 1,
        "accuracy": float(correct) / len(order),
        "loss": float(loss_sum) / len(order),
        "val_accuracy": val_accuracy,
        "val_loss": val_loss,
        "learning_rate": rate,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _batch(
    torch: Any, run: _TorchRun, chosen: np.ndarray, generator: Any, seed: int, step: int
) -> tuple[Any, Any]:
    """One training batch on the device: augmented, mixed up if configured, NCHW."""
    index = torch.from_numpy(chosen).to(run.device)
    images = run.train_images[index].permute(0, 3, 1, 2).float()
    targets = run.train_targets[index]
    images = augment_batch(images, run.augment, generator)
    if run.config.mixup_alpha > 0:
        lam, partner = sampling.mixup_pairs(len(chosen), run.config.mixup_alpha, seed, step)
        lam = torch.from_numpy(lam).to(run.device)
        partner = torch.from_numpy(partner).to(run.device)
        images, targets = sampling.mix(images, lam, partner), sampling.mix(targets, lam, partner)
    return images.contiguous(memory_format=torch.channels_last), targets


class _TimeBudget:
    """``--time-budget``: after the second epoch of a call (or the first, when a second
    would not fit) the planned epochs shrink to what fits (the schedule follows), and an
    epoch that would overrun is not started."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.started = time.perf_counter()
        self.last_epoch_seconds = 0.0
        self.checked = False

    def allows(self, loop: EpochLoop, run_dir: Path) -> bool:
        if self.seconds is None or not self.last_epoch_seconds:
            return True
        config, epoch = loop.config, loop.epoch
        elapsed = time.perf_counter() - self.started
        overrun = elapsed + self.last_epoch_seconds > self.seconds
        if not self.checked and (overrun or loop.epochs_this_call >= min(2, config.epochs)):
            self.checked = True
            fits = epoch + int((self.seconds - elapsed) / (self.last_epoch_seconds * 1.05))
            if fits < config.epochs:
                logger.warning(
                    "time budget %.0f s: %d epochs instead of %d (the schedule follows)",
                    self.seconds, max(fits, epoch), config.epochs,
                )  # fmt: skip
                config.epochs = max(fits, epoch)
                write_run_config(run_dir, config)
                if epoch >= config.epochs:
                    return False
        if overrun:
            logger.warning("time budget %.0f s reached after epoch %d", self.seconds, epoch)
            return False
        return True


def _finish(run_dir: Path, state: dict[str, Any]) -> TrainResult:
    """Calibrate the run where Keras is installed; else say how to finish it elsewhere."""
    try:
        import_keras()
    except ImportError:
        print(
            f"{run_dir}: trained; Keras is not installed here, so finish it where it is: "
            f"ferkit train --finish --out {run_dir}",
            file=sys.stderr,
        )
        return TrainResult(run_dir, {"best_val_accuracy": state["best_score"], **state})
    return finish_now(run_dir)
