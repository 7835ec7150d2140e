"""``ferkit train --engine torch``: train ``ferkit_cnn`` with PyTorch, for GPUs without TensorFlow.

The Keras engine (:mod:`ferkit.train`) is the reference. This engine exists for machines
whose accelerator has PyTorch but no TensorFlow (a rented GPU box): it trains a module that
mirrors :func:`ferkit.models.build_ferkit_cnn` layer for layer, with the same settings
(augmentation, label smoothing, AdamW or SGD with decoupled weight decay, warm-up + cosine
schedule, shuffled or balanced epochs from the same seeds, mixup, class weights, soft
labels), and writes the same self-describing run folder. The best weights are stored under
the Keras layer names (``checkpoints/best.weights.npz``), so the run becomes an ordinary
Keras run: :func:`ferkit.train.finish_now` (``ferkit train --finish``) rebuilds
``checkpoints/best.keras`` from them and calibrates it, on any machine with Keras.

The whole training set lives on the device as ``uint8`` and augmentation runs there on
whole batches (one affine warp for flip, rotation, zoom and translation, then brightness,
contrast and random erasing), so a small CNN is not starved by a CPU input pipeline.
Every epoch reseeds its shuffling, augmentation and dropout from ``seed`` and the epoch
number, and ``checkpoints/last.pt`` holds the weights and optimizer state after each
epoch, so ``--resume`` continues where a run stopped.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ferkit.train import (
    BEST_CHECKPOINT,
    CONFIG_NAME,
    TrainConfig,
    TrainResult,
    _epoch_order,
    _targets,
    class_weights,
    commit_epoch,
    load_run_data,
    open_run,
    record_epoch,
    removed_on_failure,
    save_atomic,
    verify_checkpoint,
    write_json,
    write_run_config,
)

logger = logging.getLogger(__name__)

LAST_TORCH_CHECKPOINT = "checkpoints/last.pt"
BEST_WEIGHTS = "checkpoints/best.weights.npz"
KERAS_BN_EPSILON = 1e-3  # keras.layers.BatchNormalization's default (PyTorch's is 1e-5)
KERAS_ADAM_EPSILON = 1e-7


def import_torch() -> Any:
    if "tensorflow" in sys.modules and "torch._dynamo" not in sys.modules:
        # PyTorch's optimizers import torch._dynamo, which crashes the process when
        # TensorFlow was loaded first (seen with torch 2.14 + TensorFlow 2.21).
        raise RuntimeError(
            "the torch engine must load PyTorch before TensorFlow in a process: run it "
            "through the ferkit train command, or import torch first"
        )
    try:
        import torch
        import torch._dynamo
    except ImportError as error:
        raise ImportError(
            "the torch engine needs PyTorch: pip install 'ferkit[torch]' (or torch), "
            "or train with the default engine, --engine keras"
        ) from error
    return torch


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


def load_torch_from_keras_weights(module: Any, path: str | Path) -> None:
    """Set the torch module from Keras-layout weights (the inverse of :func:`keras_weights`).

    Raises:
        ValueError: a layer is missing from the file or has other shapes.
    """
    torch = import_torch()

    with np.load(path) as stored:
        arrays = {key: stored[key] for key in stored.files}

    def take(layer: str, index: int, shape: tuple[int, ...], transpose: tuple | None = None):
        key = f"{layer}/{index}"
        if key not in arrays:
            raise ValueError(f"{path}: no weights for layer {layer!r}")
        value = arrays[key] if transpose is None else arrays[key].transpose(transpose)
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"{path}: layer {layer!r} has shape {value.shape}, wants {shape}")
        return torch.from_numpy(np.ascontiguousarray(value))

    with torch.no_grad():
        for name, conv in module.convs.items():
            conv.weight.copy_(take(name, 0, conv.weight.shape, (3, 2, 0, 1)))
        for name, norm in module.norms.items():
            for index, tensor in enumerate(
                (norm.weight, norm.bias, norm.running_mean, norm.running_var)
            ):
                tensor.copy_(take(name, index, tensor.shape))
        module.logits.weight.copy_(take("logits", 0, module.logits.weight.shape, (1, 0)))
        module.logits.bias.copy_(take("logits", 1, module.logits.bias.shape))


def build_torch_model(model_config: Any) -> Any:
    """A PyTorch module computing exactly what :func:`ferkit.models.build_ferkit_cnn` computes
    at inference, with its parameters named after the Keras layers."""
    torch = import_torch()
    from torch import nn
    from torch.nn import functional

    class FerkitCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.widths = tuple(model_config.widths)
            self.blocks = model_config.blocks_per_stage
            momentum = 1.0 - model_config.bn_momentum  # PyTorch weighs the new batch
            self.convs = nn.ModuleDict()
            self.norms = nn.ModuleDict()
            channels = model_config.channels
            for stage, width in enumerate(self.widths):
                stage_input = channels
                for block in range(self.blocks):
                    self.convs[f"s{stage}_conv{block}"] = nn.Conv2d(
                        channels, width, 3, padding=1, bias=False
                    )
                    self.norms[f"s{stage}_bn{block}"] = nn.BatchNorm2d(
                        width, eps=KERAS_BN_EPSILON, momentum=momentum
                    )
                    channels = width
                if stage > 0:
                    self.convs[f"s{stage}_proj"] = nn.Conv2d(stage_input, width, 1, bias=False)
                    self.norms[f"s{stage}_proj_bn"] = nn.BatchNorm2d(
                        width, eps=KERAS_BN_EPSILON, momentum=momentum
                    )
            self.dropout = nn.Dropout(model_config.dropout_rate)
            self.logits = nn.Linear(channels, model_config.n_classes)
            self._init_like_keras()

        def _init_like_keras(self) -> None:
            # Keras: glorot_uniform kernels, zero biases.
            for module in [*self.convs.values(), self.logits]:
                nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(self.logits.bias)

        def forward(self, x: Any) -> Any:  # float NCHW in the 0..255 range
            x = x * (1.0 / 127.5) - 1.0
            for stage in range(len(self.widths)):
                shortcut = x
                for block in range(self.blocks):
                    x = self.norms[f"s{stage}_bn{block}"](self.convs[f"s{stage}_conv{block}"](x))
                    if block < self.blocks - 1 or stage == 0:
                        x = functional.relu(x)
                if stage > 0:
                    projected = self.norms[f"s{stage}_proj_bn"](
                        self.convs[f"s{stage}_proj"](shortcut)
                    )
                    x = functional.relu(x + projected)
                if stage < len(self.widths) - 1:
                    x = functional.max_pool2d(x, 2)
            x = torch.mean(x, dim=(2, 3))
            return self.logits(self.dropout(x))

    return FerkitCNN()


def keras_weights(module: Any) -> dict[str, list[np.ndarray]]:
    """The module's weights per Keras layer name, in Keras's layout and order."""
    weights: dict[str, list[np.ndarray]] = {}
    for name, conv in module.convs.items():  # (out, in, kh, kw) -> (kh, kw, in, out)
        weights[name] = [conv.weight.detach().float().cpu().numpy().transpose(2, 3, 1, 0)]
    for name, norm in module.norms.items():
        weights[name] = [
            tensor.detach().float().cpu().numpy()
            for tensor in (norm.weight, norm.bias, norm.running_mean, norm.running_var)
        ]
    weights["logits"] = [
        module.logits.weight.detach().float().cpu().numpy().T,
        module.logits.bias.detach().float().cpu().numpy(),
    ]
    return weights


def save_keras_weights(module: Any, path: str | Path) -> None:
    arrays = {
        f"{layer}/{index}": array
        for layer, layer_weights in keras_weights(module).items()
        for index, array in enumerate(layer_weights)
    }
    save_atomic(lambda pending: np.savez(pending, **arrays), Path(path))


def load_keras_weights(model: Any, path: str | Path) -> None:
    """Set a Keras ``ferkit_cnn`` from a ``best.weights.npz`` written by this engine.

    Raises:
        ValueError: a layer with weights is missing from the file, or shapes differ.
    """
    with np.load(path) as stored:
        by_layer: dict[str, dict[int, np.ndarray]] = {}
        for key in stored.files:
            layer, index = key.rsplit("/", 1)
            by_layer.setdefault(layer, {})[int(index)] = stored[key]
    for layer in model.layers:
        if not layer.weights or layer.name == "augmentation":
            continue
        if layer.name not in by_layer:
            raise ValueError(f"{path}: no weights for layer {layer.name!r}")
        arrays = [by_layer[layer.name][index] for index in sorted(by_layer[layer.name])]
        expected = [tuple(weight.shape) for weight in layer.get_weights()]
        if [array.shape for array in arrays] != expected:
            raise ValueError(
                f"{path}: layer {layer.name!r} has shapes {[a.shape for a in arrays]}, "
                f"the model wants {expected}"
            )
        layer.set_weights(arrays)


def learning_rate_at(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of ``step``: Keras's ``CosineDecay`` with linear warm-up from a
    tenth of the peak (:func:`ferkit.train._learning_rate`), or constant."""
    if config.schedule == "constant":
        return config.learning_rate
    warmup = config.warmup_epochs * steps_per_epoch
    peak = config.learning_rate
    if warmup and step < warmup:
        start = peak / 10
        return start + (peak - start) * step / warmup
    decay_steps = max(1, config.epochs * steps_per_epoch - warmup)
    progress = min(step - warmup, decay_steps) / decay_steps
    alpha = 0.01
    return peak * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * progress)) + alpha)


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

    started_call = time.perf_counter()
    run_dir = Path(run_dir)
    config, state, finished = open_run(config, run_dir, resume, overwrite)
    if finished is not None:
        return finished
    config.engine = "torch"
    config.validate()
    check_supported(config)

    with removed_on_failure(run_dir, resume):
        data, train_split, val_split, model_config = load_run_data(config, run_dir, resume, state)

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        on_gpu = device.startswith("cuda")
        if on_gpu:
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(config.seed)
        module = build_torch_model(model_config).to(device).to(memory_format=torch.channels_last)
        parameters = list(module.parameters())
        if config.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                parameters, lr=config.learning_rate, momentum=0.9, nesterov=True
            )
        else:
            optimizer = torch.optim.Adam(
                parameters, lr=config.learning_rate, eps=KERAS_ADAM_EPSILON
            )
        if config.init_from and not resume:
            source = _torch_init_weights(config.init_from)
            load_torch_from_keras_weights(module, source)
            write_json(run_dir / "init.json", {"source": str(source)})
    checkpoint = verify_checkpoint(run_dir, state, LAST_TORCH_CHECKPOINT) if resume else None
    if checkpoint is not None:
        try:
            saved = torch.load(checkpoint, map_location=device)
            module.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
        except Exception as error:
            raise ValueError(
                f"{checkpoint}: cannot be loaded ({type(error).__name__}: {str(error)[:200]}); "
                "restore it, or start the run again with --overwrite"
            ) from None

    train_images = torch.from_numpy(train_split.images).to(device)
    train_targets = torch.from_numpy(_targets(train_split, config.soft_labels)).to(device)
    val_images = torch.from_numpy(val_split.images).to(device)
    val_targets = torch.from_numpy(_targets(val_split, config.soft_labels)).to(device)
    weights = None
    if config.class_weighting == "balanced":
        table = class_weights(train_split.labels, len(data.classes))
        weights = torch.tensor([table[i] for i in range(len(table))], device=device)
    steps_per_epoch = math.ceil(len(train_split) / config.batch_size)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if on_gpu
        else torch.autocast("cpu", enabled=False)
    )
    hardware = f"1 {torch.cuda.get_device_name()} GPU" if on_gpu else f"{os.cpu_count()} CPU cores"
    state["trained_on"] = f"{hardware}, torch engine (PyTorch {torch.__version__})"
    print(
        f"{state['trained_on']}: {sum(p.numel() for p in parameters):,} parameters, "
        f"{len(train_split)} train faces",
        flush=True,
    )

    epochs_this_call = 0
    budget_checked = False
    last_epoch_seconds = 0.0
    while state["epoch"] < config.epochs:
        epoch = state["epoch"]
        if time_budget is not None and last_epoch_seconds:
            elapsed = time.perf_counter() - started_call
            if not budget_checked and epochs_this_call >= min(2, config.epochs):
                budget_checked = True
                fits = epoch + int((time_budget - elapsed) / (last_epoch_seconds * 1.05))
                if fits < config.epochs:
                    logger.warning(
                        "time budget %.0f s: %d epochs instead of %d (the schedule follows)",
                        time_budget,
                        max(fits, epoch),
                        config.epochs,
                    )
                    config.epochs = max(fits, epoch)
                    write_run_config(run_dir, config)
                    if epoch >= config.epochs:
                        break
            if elapsed + last_epoch_seconds > time_budget:
                logger.warning("time budget %.0f s reached after epoch %d", time_budget, epoch)
                break
        epoch_seed = config.seed * 100_003 + epoch
        torch.manual_seed(epoch_seed)
        generator = torch.Generator(device=device)
        generator.manual_seed(epoch_seed)
        order = torch.from_numpy(_epoch_order(train_split, config, epoch_seed)).to(device)
        module.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        epoch_started = time.perf_counter()
        for step in range(steps_per_epoch):
            chosen = order[step * config.batch_size : (step + 1) * config.batch_size]
            images = train_images[chosen].permute(0, 3, 1, 2).float()
            targets = train_targets[chosen]
            images = augment_batch(images, model_config.augment, generator)
            if config.mixup_alpha > 0:
                rng = np.random.default_rng([epoch_seed, step])
                lam = torch.from_numpy(
                    rng.beta(config.mixup_alpha, config.mixup_alpha, size=len(chosen))
                ).to(device, torch.float32)
                partner = torch.from_numpy(rng.permutation(len(chosen))).to(device)
                images = (
                    lam[:, None, None, None] * images
                    + (1 - lam[:, None, None, None]) * images[partner]
                )
                targets = lam[:, None] * targets + (1 - lam[:, None]) * targets[partner]
            images = images.contiguous(memory_format=torch.channels_last)
            rate = learning_rate_at(config, epoch * steps_per_epoch + step, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = rate
            with autocast:
                logits = module(images)
            losses = _soft_cross_entropy(logits, targets, config.label_smoothing)
            if weights is not None:
                losses = losses * weights[targets.argmax(1)]
            loss = losses.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.weight_decay:  # decoupled, before the update, as Keras does
                with torch.no_grad():
                    torch._foreach_mul_(parameters, 1.0 - rate * config.weight_decay)
            optimizer.step()
            loss_sum += loss.detach() * len(chosen)
            correct += (logits.detach().argmax(1) == targets.argmax(1)).sum()
            seen += len(chosen)
        val_accuracy, val_loss, _ = evaluate_torch(
            module, val_images, val_targets, config.label_smoothing
        )
        seconds = time.perf_counter() - epoch_started
        last_epoch_seconds = seconds
        row = {
            "epoch": epoch + 1,
            "accuracy": float(correct) / seen,
            "loss": float(loss_sum) / seen,
            "val_accuracy": val_accuracy,
            "val_loss": val_loss,
            "learning_rate": rate,
            "seconds": round(seconds, 2),
        }
        improved = record_epoch(run_dir, state, row)
        print(
            f"epoch {epoch + 1}/{config.epochs} - {seconds:.1f}s - loss {row['loss']:.4f} - "
            f"accuracy {row['accuracy']:.4f} - val_loss {val_loss:.4f} - "
            f"val_accuracy {val_accuracy:.4f}",
            flush=True,
        )
        if improved:
            save_keras_weights(module, run_dir / BEST_WEIGHTS)
        commit_epoch(
            run_dir,
            state,
            lambda path: torch.save(
                {"model": module.state_dict(), "optimizer": optimizer.state_dict()}, path
            ),
            LAST_TORCH_CHECKPOINT,
        )
        epochs_this_call += 1
        patience = config.early_stopping_patience
        if patience and state["wait"] >= patience:
            logger.info("early stopping: no val improvement for %d epochs", patience)
            break
        stopping = stop_after_epochs is not None and epochs_this_call >= stop_after_epochs
        if stopping and state["epoch"] < config.epochs:
            return TrainResult(run_dir, {"interrupted_after_epoch": state["epoch"]})

    try:
        from ferkit._tf import import_keras

        import_keras()
    except ImportError:
        print(
            f"{run_dir}: trained; Keras is not installed here, so finish it where it is: "
            f"ferkit train --finish --out {run_dir}",
            file=sys.stderr,
        )
        return TrainResult(run_dir, {"best_val_accuracy": state["best_score"], **state})
    from ferkit.train import finish_now

    return finish_now(run_dir)


def keras_model_from_run(run_dir: str | Path) -> Any:
    """Build the Keras model of a torch-engine run and load its best weights."""
    from ferkit.models import ModelConfig, build_model  # Keras: only after training

    run_dir = Path(run_dir)
    config = TrainConfig.from_yaml(run_dir / CONFIG_NAME)
    model = build_model(ModelConfig(**config.model))
    load_keras_weights(model, run_dir / BEST_WEIGHTS)
    return model


def ensure_keras_checkpoint(run_dir: str | Path) -> bool:
    """Write ``checkpoints/best.keras`` of a torch-engine run from its best weights, if
    missing. Returns whether one was written."""
    run_dir = Path(run_dir)
    if (run_dir / BEST_CHECKPOINT).exists() or not (run_dir / BEST_WEIGHTS).exists():
        return False
    save_atomic(keras_model_from_run(run_dir).save, run_dir / BEST_CHECKPOINT)
    return True
