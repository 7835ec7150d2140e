"""``init_from``: the architecture a run takes from the model it starts from.

A run that starts from another model's weights builds that model's architecture, read
from the ``config.yaml`` beside it (a run folder, a bundle, an installed model), unless
the run's own settings say otherwise field by field; the engines then copy every layer or
refuse (:func:`ferkit.training.keras_engine.initialise_from`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

#: Model settings that come from the data and the run, never from the source model.
RUN_OWN = ("n_classes", "image_size", "channels", "seed", "weights")


def source_config_file(source: str | os.PathLike[str]) -> Path | None:
    """The ``config.yaml`` that describes the model ``init_from`` names: beside the
    model file, or in the run folder around its ``checkpoints/``; None when there is
    none (a bare ``.keras`` file)."""
    from ferkit.models.folder import resolve_model

    path = resolve_model(None if str(source) == "default" else str(source))
    if path is None:
        from ferkit.models.folder import DEFAULT_MODEL_DIR

        path = DEFAULT_MODEL_DIR
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    for candidate in (folder / "config.yaml", folder.parent / "config.yaml"):
        if candidate.is_file():
            return candidate
    return None


def source_model_settings(source: str | os.PathLike[str]) -> dict[str, Any]:
    """The model settings (architecture, widths, depth, head, augmentation) of the model
    ``init_from`` names, without those that come from the run's data and seed
    (:data:`RUN_OWN`); empty when no ``config.yaml`` describes it."""
    config = source_config_file(source)
    if config is None:
        logger.warning(
            "init_from %s: no config.yaml beside it, so its architecture is not known; the "
            "run's own model settings are used and every layer must match",
            source,
        )
        return {}
    model = (yaml.safe_load(config.read_text()) or {}).get("model") or {}
    return {key: value for key, value in model.items() if key not in RUN_OWN}


def init_model_settings(
    run_model: dict[str, Any], source: str | os.PathLike[str]
) -> dict[str, Any]:
    """The model settings of a run that starts from ``source``: the source's, with the
    run's own ``run_model`` settings on top (what the user said otherwise)."""
    settings = {**source_model_settings(source), **run_model}
    taken = sorted(set(settings) - set(run_model))
    if taken:
        logger.info("init_from %s: model settings from its config.yaml: %s", source, taken)
    return settings
