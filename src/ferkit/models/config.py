"""Model settings as plain dataclasses: importable without Keras (the torch engine uses them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AugmentConfig:
    """Random preprocessing applied inside the model during training only."""

    translate: float = 0.1  # fraction of the side
    flip: bool = True
    rotate_degrees: float = 10.0
    zoom: float = 0.1
    brightness: float = 0.2
    contrast: float = 0.2
    erasing: float = 0.25  # probability-like strength of random erasing; 0 disables
    sharpness: float = 0.0  # blend towards blurred or sharpened by up to this; 0 disables
    # share of faces given one random corruption (blur, downscale, JPEG, noise, gamma,
    # occlusion: ferkit.models.corruption); 0 disables
    corruption: float = 0.0

    def sharpness_range(self) -> tuple[float, float]:
        """Keras ``RandomSharpness`` factors for ``sharpness``: centred on 0.5 (the image
        unchanged), from smoothed (0) to sharpened (1)."""
        return max(0.0, 0.5 - self.sharpness / 2), min(1.0, 0.5 + self.sharpness / 2)

    @classmethod
    def off(cls) -> AugmentConfig:
        """No augmentation at all (short tests, or data augmented elsewhere)."""
        return cls(
            translate=0, flip=False, rotate_degrees=0, zoom=0, brightness=0, contrast=0, erasing=0
        )


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model (saved with every run)."""

    arch: str = "ferkit_cnn"
    n_classes: int = 7
    image_size: int = 48
    channels: int = 1
    widths: tuple[int, ...] = (32, 64, 128, 256)  # ferkit_cnn: channels per stage
    blocks_per_stage: int = 2
    dropout_rate: float = 0.4
    bn_momentum: float = 0.99  # 0.9 settles faster on short runs
    weights: str | None = None  # vgg16: "imagenet", a weights file, or None
    backbone_size: int = 48  # vgg16: side the faces are resized to before the backbone
    head_units: int = 256  # vgg16: width of the dense layer of the new head
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)
        self.widths = tuple(self.widths)
