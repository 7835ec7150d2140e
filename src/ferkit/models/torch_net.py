"""``ferkit_cnn`` as a PyTorch module, layer for layer the Keras model of
:func:`ferkit.models.keras_nets.build_ferkit_cnn`, and its weights in the Keras layout
(the torch engine trains it; the Keras model is rebuilt from its weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ferkit.extras import import_torch

KERAS_BN_EPSILON = 1e-3  # keras.layers.BatchNormalization's default (PyTorch's is 1e-5)


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
    """A PyTorch module computing exactly what :func:`ferkit.models.keras_nets.build_ferkit_cnn` computes
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
    """Write the module's weights in the Keras layout to ``path`` (``.npz``); the torch
    engine writes through a temporary name, so the previous file stays whole."""
    arrays = {
        f"{layer}/{index}": array
        for layer, layer_weights in keras_weights(module).items()
        for index, array in enumerate(layer_weights)
    }
    np.savez(Path(path), **arrays)
