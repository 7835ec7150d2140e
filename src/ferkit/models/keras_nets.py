"""The model zoo: a registry of architectures, each built by one function.

Every model takes ``uint8``-range faces ``(size, size, channels)`` and returns logits;
rescaling, augmentation (active only in training) and any backbone preprocessing live
inside the graph, so a saved model needs nothing else to predict.

Adding an architecture is one decorated function::

    @register("my_net")
    def build_my_net(config: ModelConfig) -> keras.Model: ...
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ferkit.extras import import_keras
from ferkit.models.config import AugmentConfig, ModelConfig

if TYPE_CHECKING:
    import keras


ARCHITECTURES: dict[str, Callable[[ModelConfig], keras.Model]] = {}


VGG16_BLOCKS = ("block1", "block2", "block3", "block4", "block5")


def register(name: str) -> Callable:
    """Add an architecture builder to :data:`ARCHITECTURES` under ``name``."""

    def decorator(builder: Callable[[ModelConfig], keras.Model]) -> Callable:
        ARCHITECTURES[name] = builder
        return builder

    return decorator


def build_model(config: ModelConfig) -> keras.Model:
    """Build the architecture ``config.arch`` (see :data:`ARCHITECTURES`)."""
    keras = import_keras()
    if config.arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {config.arch!r}; choose one of {sorted(ARCHITECTURES)}"
        )
    keras.utils.set_random_seed(config.seed)
    return ARCHITECTURES[config.arch](config)


def augmentation(config: AugmentConfig, seed: int = 0) -> keras.Sequential:
    """The training-time augmentation pipeline, as Keras random layers."""
    keras = import_keras()
    layers = keras.layers
    steps: list[layers.Layer] = []
    if config.flip:
        steps.append(layers.RandomFlip("horizontal", seed=seed))
    if config.rotate_degrees:
        steps.append(
            layers.RandomRotation(config.rotate_degrees / 360.0, fill_mode="reflect", seed=seed + 1)
        )
    if config.zoom:
        steps.append(
            layers.RandomZoom((-config.zoom, config.zoom), fill_mode="reflect", seed=seed + 2)
        )
    if config.translate:
        steps.append(
            layers.RandomTranslation(
                config.translate, config.translate, fill_mode="reflect", seed=seed + 3
            )
        )
    if config.brightness:
        steps.append(
            layers.RandomBrightness(config.brightness, value_range=(0, 255), seed=seed + 4)
        )
    if config.contrast:
        steps.append(layers.RandomContrast(config.contrast, value_range=(0, 255), seed=seed + 5))
    if config.sharpness:
        # Real photos cropped to 48 px are sharper than FER2013's upscaled faces: train on both.
        steps.append(
            layers.RandomSharpness(config.sharpness_range(), value_range=(0, 255), seed=seed + 7)
        )
    if config.corruption:
        # Blur, downscaling, JPEG, noise, gamma or occlusion, at random (ferkit.models.corruption).
        steps.append(custom_layers()["RandomCorruption"](config.corruption, seed=seed + 8))
    if config.erasing:
        steps.append(
            layers.RandomErasing(
                factor=config.erasing, scale=(0.02, 0.15), value_range=(0, 255), seed=seed + 6
            )
        )
    return keras.Sequential(steps, name="augmentation")


@functools.cache
def custom_layers() -> dict[str, type]:
    """ferkit's own Keras layers, registered for loading saved models (call it before
    ``keras.models.load_model``); defined on first use, so importing this module loads no
    Keras."""
    keras = import_keras()
    layers = keras.layers

    @keras.saving.register_keras_serializable(package="ferkit")
    class GrayToRGB(layers.Layer):
        """Repeat a one-channel image into three channels (pretrained backbones want RGB)."""

        def call(self, inputs: Any) -> Any:
            if inputs.shape[-1] == 3:
                return inputs
            return keras.ops.repeat(inputs, 3, axis=-1)

        def compute_output_shape(self, input_shape: tuple) -> tuple:
            return (*input_shape[:-1], 3)

    @keras.saving.register_keras_serializable(package="ferkit")
    class VGGPreprocess(layers.Layer):
        """VGG16's own input preprocessing ("caffe" mode): RGB to BGR, minus ImageNet means."""

        def call(self, inputs: Any) -> Any:
            bgr = keras.ops.flip(inputs, axis=-1)
            return bgr - keras.ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=bgr.dtype)

    @keras.saving.register_keras_serializable(package="ferkit")
    class RandomCorruption(layers.Layer):
        """In training only: give a share ``rate`` of the faces one random corruption of
        :data:`ferkit.models.corruption.KINDS` (blur, downscaling, JPEG, noise, gamma,
        occlusion) at a random strength."""

        def __init__(self, rate: float, seed: int | None = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.rate = float(rate)
            self.seed = seed
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, inputs: Any, training: bool | None = None) -> Any:
            from ferkit.models import corruption

            if not training or not self.rate:
                return inputs
            ops = keras.ops
            images = ops.cast(inputs, "float32")
            batch = ops.shape(images)[0]
            draws = keras.random.uniform(
                (batch, corruption.DRAWS), seed=self.seed_generator, dtype="float32"
            )
            noise = keras.random.normal(ops.shape(images), seed=self.seed_generator)
            side = int(images.shape[1])
            constants = {
                name: ops.convert_to_tensor(value)
                for name, value in corruption.constants(side).items()
            }
            result = corruption.corrupt(ops, images, draws, noise, self.rate, constants)
            return ops.cast(result, inputs.dtype)

        def compute_output_shape(self, input_shape: tuple) -> tuple:
            return input_shape

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "rate": self.rate, "seed": self.seed}

    return {
        "GrayToRGB": GrayToRGB,
        "VGGPreprocess": VGGPreprocess,
        "RandomCorruption": RandomCorruption,
    }


def _input_and_augment(config: ModelConfig) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    keras = import_keras()
    inputs = keras.Input((config.image_size, config.image_size, config.channels), name="face")
    augment = augmentation(config.augment, seed=config.seed)
    return inputs, augment(inputs) if augment.layers else inputs


@register("ferkit_cnn")
def build_ferkit_cnn(config: ModelConfig) -> keras.Model:
    """ferkit's efficient CNN for 48x48 faces, trained from scratch.

    VGG-style stages of ``blocks_per_stage`` 3x3 conv + batch norm + ReLU, a residual
    shortcut around each stage's convolutions after the first stage, max pooling
    between stages, global average pooling and dropout before the classifier.
    """
    keras = import_keras()
    layers = keras.layers
    inputs, x = _input_and_augment(config)
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(x)
    for stage, width in enumerate(config.widths):
        shortcut = x
        for block in range(config.blocks_per_stage):
            x = layers.Conv2D(
                width, 3, padding="same", use_bias=False, name=f"s{stage}_conv{block}"
            )(x)
            x = layers.BatchNormalization(momentum=config.bn_momentum, name=f"s{stage}_bn{block}")(
                x
            )
            if block < config.blocks_per_stage - 1 or stage == 0:
                x = layers.ReLU(name=f"s{stage}_relu{block}")(x)
        if stage > 0:
            shortcut = layers.Conv2D(width, 1, use_bias=False, name=f"s{stage}_proj")(shortcut)
            shortcut = layers.BatchNormalization(
                momentum=config.bn_momentum, name=f"s{stage}_proj_bn"
            )(shortcut)
            x = layers.Add(name=f"s{stage}_add")([x, shortcut])
            x = layers.ReLU(name=f"s{stage}_out")(x)
        if stage < len(config.widths) - 1:
            x = layers.MaxPooling2D(name=f"s{stage}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(config.dropout_rate, seed=config.seed, name="dropout")(x)
    outputs = layers.Dense(config.n_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="ferkit_cnn")


VGG16_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"  # Keras's file name


@register("vgg16")
def build_vgg16(config: ModelConfig) -> keras.Model:
    """Keras's VGG16 as a feature extractor with a new head (transfer learning).

    The backbone is created frozen (phase one); :func:`set_vgg16_trainable_blocks`
    unfreezes its top blocks for fine-tuning (phase two). It is always called with
    ``training=False``, so its behaviour does not change between phases.
    """
    keras = import_keras()
    layers = keras.layers
    weights = config.weights
    if weights not in (None, "imagenet"):
        from pathlib import Path

        if not Path(weights).is_file():
            raise FileNotFoundError(
                f"{weights}: VGG16 weights file not found; pass --weights imagenet (needs "
                "internet), --weights none, or the path of a VGG16 (include_top=False) file"
            )
    size = config.backbone_size
    try:
        backbone = keras.applications.VGG16(
            include_top=False, weights=weights, input_shape=(size, size, 3), pooling=None
        )
    except Exception as error:  # Keras raises a bare Exception when the download fails
        if weights != "imagenet" or "URL fetch failure" not in str(error):
            raise
        raise OSError(
            f"VGG16 ImageNet weights could not be downloaded ({error}). Without internet, "
            f"fetch {VGG16_NOTOP_FILE} on a machine that has it (Keras keeps it in "
            "~/.keras/models/) and pass --weights PATH to that file, or train with "
            "--weights none"
        ) from error
    backbone.trainable = False
    inputs, x = _input_and_augment(config)
    if size != config.image_size:
        x = layers.Resizing(size, size, name="resize")(x)
    x = custom_layers()["GrayToRGB"](name="gray_to_rgb")(x)
    x = custom_layers()["VGGPreprocess"](name="vgg_preprocess")(x)
    x = backbone(x, training=False)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(config.head_units, activation="relu", name="head_dense")(x)
    x = layers.Dropout(config.dropout_rate, seed=config.seed, name="dropout")(x)
    outputs = layers.Dense(config.n_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="vgg16_transfer")


def vgg16_backbone(model: keras.Model) -> keras.Model:
    return model.get_layer("vgg16")


def set_vgg16_trainable_blocks(model: keras.Model, n_blocks: int) -> None:
    """Unfreeze the top ``n_blocks`` convolutional blocks of the VGG16 backbone (0 freezes
    it whole). The head always trains."""
    backbone = vgg16_backbone(model)
    trainable = set(VGG16_BLOCKS[len(VGG16_BLOCKS) - n_blocks :]) if n_blocks else set()
    backbone.trainable = bool(trainable)
    for layer in backbone.layers:
        layer.trainable = layer.name.split("_")[0] in trainable


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


def multiply_adds(model: Any) -> int:
    """Multiply-adds of one face through ``model``'s ``Conv2D``, ``DepthwiseConv2D`` and
    ``Dense`` layers, nested functional models included (what its speed on a CPU follows;
    batch norm, pooling, activations and the training-only augmentation are left out;
    grouped convolutions are not counted as such)."""
    total = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in ("Conv2D", "DepthwiseConv2D"):
            height, width, channels = layer.output.shape[1:]
            window = int(np.prod(layer.kernel_size))
            per_output = window * (layer.input.shape[-1] if kind == "Conv2D" else 1)
            total += int(height) * int(width) * int(channels) * per_output
        elif kind == "Dense":
            total += int(layer.input.shape[-1]) * int(layer.units)
        elif hasattr(layer, "layers") and kind != "Sequential":  # a nested model
            total += multiply_adds(layer)
    return total
