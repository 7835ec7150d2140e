"""``ferkit prepare``: turn a raw FER dataset into a clean, compact, reproducible cache.

The output folder holds one ``SPLIT.npz`` per split (``images`` uint8 ``(N, H, W, C)``,
``labels`` int, ``paths`` relative to the source, and ``soft_labels`` when asked) and a
``manifest.json`` that records the class order, per-split counts, the settings, a
content hash of the source, duplicates and every item left out with the reason.

Pixels are decoded on all cores. The folder is written under a temporary name and
renamed at the end, so a crashed or failed run never leaves output that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ferkit import __version__
from ferkit.data.dataset import MANIFEST_NAME
from ferkit.data.sources import (
    FERPLUS_MODES,
    FORMATS,
    SPLIT_ORDER,
    Item,
    Skipped,
    SourceListing,
    list_source,
)
from ferkit.faces import DEFAULT_DETECTOR, detector_names
from ferkit.images import (
    DEFAULT_CROP_MAX_SIDE,
    DEFAULT_MAX_PIXELS,
    FACE_MODES,
    ImageReadError,
    decode_image,
    looks_like_crop,
    resize_face,
)
from ferkit.outputs import format_memory, output_folder, path_text, peak_memory_mb, progress_bar
from ferkit.settings import check_choices, setting

logger = logging.getLogger(__name__)


#: Kinds of skipped items that are failures of an input (the run exits with status 3),
#: as opposed to curation (no face found, duplicates, FER+ votes without a winner).
FAILURE_KINDS = frozenset(
    {
        "unreadable",
        "not_image",
        "too_large",
        "too_complex",
        "malformed_row",
        "missing_file",
        "error",
    }
)


class NoUsableImagesError(ValueError):
    """A source held nothing that could be prepared."""


@dataclass
class PrepareConfig:
    """Settings of one ``prepare`` run; written into the manifest as resolved."""

    format: str = setting("auto", "source layout; auto detects it", choices=("auto", *FORMATS))
    faces: str = setting(
        "auto",
        "auto: images up to --crop-max-side px are taken as face crops, larger ones go "
        "through the detector; crop: never detect; detect: always detect",
        choices=FACE_MODES,
    )
    detector: str = setting(
        DEFAULT_DETECTOR,
        "face detector for photos (the same default as predict, evaluate and serve)",
        choices=detector_names,
    )
    size: int = setting(48, "output side in pixels")
    channels: int = setting(1, "1 gray, 3 RGB", choices=(1, 3))
    margin: float | None = setting(
        None,
        "none: cut each face with the detector's fitted framing (the training crops'); a "
        "number: the box's longer side plus this share of it instead",
    )
    crop_max_side: int = setting(
        DEFAULT_CROP_MAX_SIDE,
        "auto mode: roughly square images at most this many pixels wide are crops",
    )
    val_fraction: float | None = setting(
        None,
        "share of each class for val: used when the source has no splits (then 0.1 if "
        "not given), or to carve val out of train when the source has no val split",
    )
    test_fraction: float | None = setting(
        None, "as --val-fraction (0.1 when the source has no splits and it is not given)"
    )
    seed: int = setting(0, "seed of the stratified split")
    soft_labels: bool = setting(False, "keep FER+ vote distributions as soft labels")
    ferplus_mode: str = setting(
        "plurality",
        "FER+ label rule: most votes (plurality) or more than half (majority); ties, "
        "unknown and not-a-face are dropped either way",
        choices=FERPLUS_MODES,
    )
    dedupe: bool = setting(
        False, "drop identical images: repeats within a split, and train copies of val/test faces"
    )
    compress: bool = setting(True, "compressed .npz (the CLI's --no-compress turns it off)")
    workers: int = setting(0, "processes (0: one per CPU core)")
    max_pixels: int = setting(
        DEFAULT_MAX_PIXELS,
        "pixel budget of one image: larger JPEGs are decoded reduced, others are refused",
    )

    def validate(self) -> None:
        check_choices(self)
        if not 8 <= self.size <= 1024:
            raise ValueError(f"size must be between 8 and 1024 pixels, not {self.size}")
        if self.margin is not None and not self.margin >= 0:
            raise ValueError(f"margin must be zero or positive, not {self.margin}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), not {value}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, not {self.max_pixels}")
        if (self.val_fraction or 0) + (self.test_fraction or 0) >= 1:
            raise ValueError("val_fraction + test_fraction must leave some data for training")


@dataclass
class PrepareResult:
    out_dir: Path
    manifest: dict[str, Any]


_WORKER_STATE: dict[str, Any] = {}


def _init_worker(config: PrepareConfig, single_thread: bool, parent: int | None = None) -> None:
    _WORKER_STATE["config"] = config
    _WORKER_STATE["detector"] = None
    _WORKER_STATE["single_thread"] = single_thread
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int, interval: float = 1.0) -> None:
    """End this worker process when the process that started the pool is gone (killed
    with SIGKILL, say), instead of living on as an orphan."""
    while True:
        time.sleep(interval)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # the pid was reused by another user's process
            os._exit(1)


def _detector():
    if _WORKER_STATE.get("detector") is None:
        from ferkit.faces import make_detector

        config: PrepareConfig = _WORKER_STATE["config"]
        if config.detector == "mtcnn" and _WORKER_STATE.get("single_thread"):
            from ferkit.extras import import_tensorflow

            tf = import_tensorflow()
            # Each worker process owns one core; TensorFlow's own pool would oversubscribe.
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        _WORKER_STATE["detector"] = make_detector(config.detector)
    return _WORKER_STATE["detector"]


@dataclass
class _Outcome:
    face: np.ndarray | None = None
    kind: str | None = None  # set when skipped
    reason: str | None = None
    file_sha1: str | None = None
    pixel_hash: str | None = None
    mode: str | None = None  # "crop" or "detect"


def _process_item(item: Item) -> _Outcome:
    """Decode, find and crop one item's face; never raises, so one odd input (a detector
    failure on a strange image, say) is recorded and the batch goes on."""
    try:
        return _process_item_unchecked(item)
    except Exception as error:
        logger.debug("%s failed", item.name, exc_info=True)
        return _Outcome(kind="error", reason=f"{type(error).__name__}: {error}")


def _process_item_unchecked(item: Item) -> _Outcome:
    config: PrepareConfig = _WORKER_STATE["config"]
    outcome = _Outcome()
    if item.pixels is not None:
        image = item.pixels
    else:
        try:
            data = Path(item.path).read_bytes()
        except OSError as error:
            return _Outcome(kind="unreadable", reason=f"cannot read file ({error.strerror})")
        outcome.file_sha1 = hashlib.sha1(data).hexdigest()
        mode = _face_mode(item, config, None)
        color = config.channels == 3 or mode != "crop"
        try:
            image = decode_image(data, color=color, source=item.name, max_pixels=config.max_pixels)
        except ImageReadError as error:
            outcome.kind, outcome.reason = error.kind, error.reason
            return outcome
    outcome.pixel_hash = hashlib.sha1(
        np.ascontiguousarray(image).tobytes() + str(image.shape).encode()
    ).hexdigest()
    if item.crop_box is not None:
        x, y, w, h = item.crop_box
        if (x, y, w, h) != (0, 0, image.shape[1], image.shape[0]):
            cropped = image[max(0, y) : y + h, max(0, x) : x + w]
            image = cropped if cropped.size else image
    mode = _face_mode(item, config, image.shape)
    outcome.mode = mode
    if mode == "crop":
        outcome.face = resize_face(image, config.size, config.channels)
        return outcome
    from ferkit.framing import Framing, crop_face

    detector = _detector()
    faces = detector.detect(image)
    if not faces:
        outcome.kind = "no_face"
        outcome.reason = f"no face found by the {config.detector} detector"
        return outcome
    framing = detector.framing if config.margin is None else Framing.margin(config.margin)
    outcome.face = crop_face(image, faces[0], framing, size=config.size, channels=config.channels)
    return outcome


def _face_mode(item: Item, config: PrepareConfig, shape: tuple[int, ...] | None) -> str:
    """Decide whether an image is already a face crop or a photo to run detection on."""
    if config.faces != "auto":
        return config.faces
    if item.tight_crop:
        return "crop"
    if shape is None:
        return "detect"  # decode in colour until the size is known
    return "crop" if looks_like_crop(shape, config.crop_max_side) else "detect"


def _run_items(
    items: list[Item], config: PrepareConfig, workers: int, progress: bool
) -> Iterator[_Outcome]:
    bar = progress_bar(
        total=len(items), desc="prepare", unit="img", disable=not progress, leave=False
    )
    try:
        if workers <= 1 or len(items) < 256:
            _init_worker(config, single_thread=False)
            for item in items:
                yield _process_item(item)
                bar.update()
            return
        # forkserver: workers start from a clean process even when the caller has already
        # imported TensorFlow (forking a process with TF's threads running is unsafe).
        method = "forkserver" if sys.platform.startswith("linux") else "spawn"
        context = multiprocessing.get_context(method)
        chunk = max(16, min(256, len(items) // (workers * 16)))
        with ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(config, True, os.getpid()),
        ) as pool:
            for outcome in pool.map(_process_item, items, chunksize=chunk):
                yield outcome
                bar.update()
    finally:
        bar.close()


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """Assign ``train``/``val``/``test`` per class, reproducibly from ``seed``.

    Each class contributes ``round(n * fraction)`` items to val and test, so small
    classes are represented in every split in proportion.

    Returns:
        An array of split names, one per label.
    """
    rng = np.random.default_rng(seed)
    assignment = np.full(len(labels), "train", dtype=object)
    for label in sorted(set(labels.tolist())):
        indices = np.flatnonzero(labels == label)
        indices = indices[rng.permutation(len(indices))]
        n_test = round(len(indices) * test_fraction)
        n_val = round(len(indices) * val_fraction)
        assignment[indices[:n_test]] = "test"
        assignment[indices[n_test : n_test + n_val]] = "val"
    return assignment


def _find_duplicates(kept: list[tuple[Item, _Outcome]]) -> dict[str, Any]:
    groups: dict[str, list[tuple[Item, _Outcome]]] = defaultdict(list)
    for item, outcome in kept:
        groups[outcome.pixel_hash].append((item, outcome))
    within, across, conflicting = [], [], 0
    for members in groups.values():
        if len(members) < 2:
            continue
        record = [
            {"path": item.name, "split": item.split, "label": item.label} for item, _ in members
        ]
        if len({item.label for item, _ in members}) > 1:
            conflicting += 1
        if len({item.split for item, _ in members}) > 1:
            across.append(record)
        else:
            within.append(record)
    return {
        "groups_within_split": len(within),
        "groups_across_splits": len(across),
        "groups_with_conflicting_labels": conflicting,
        "within_split": within,
        "across_splits": across,
    }


def _dedupe(kept: list[tuple[Item, _Outcome]]) -> tuple[list, list[Skipped]]:
    """Keep one copy of each image, preferring the evaluation splits (no leakage)."""
    rank = {"test": 0, "val": 1, "train": 2}
    order = sorted(range(len(kept)), key=lambda i: (rank.get(kept[i][0].split, 3), i))
    first_seen: dict[str, Item] = {}
    drop: dict[int, Item] = {}
    for index in order:
        item, outcome = kept[index]
        if outcome.pixel_hash in first_seen:
            drop[index] = first_seen[outcome.pixel_hash]
        else:
            first_seen[outcome.pixel_hash] = item
    skipped = [
        Skipped(kept[i][0].name, "duplicate", f"identical to {original.name}", kept[i][0].split)
        for i, original in sorted(drop.items())
    ]
    return [pair for i, pair in enumerate(kept) if i not in drop], skipped


def _source_hash(listing: SourceListing, kept_and_failed: list[tuple[Item, _Outcome]]) -> str:
    digest = hashlib.sha256()
    entries = dict(listing.hashed_files)
    for item, outcome in kept_and_failed:
        if outcome.file_sha1:
            entries[item.name] = outcome.file_sha1
    for name in sorted(entries):
        digest.update(f"{name}\0{entries[name]}\n".encode())
    return "sha256:" + digest.hexdigest()


def _write_split(path: Path, arrays: dict[str, np.ndarray], compress: bool) -> None:
    (np.savez_compressed if compress else np.savez)(path, **arrays)


def prepare(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: PrepareConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareResult:
    """Prepare a FER dataset for training (see the module docstring for the output).

    Args:
        source: an image folder, a ``fer2013.csv`` file or a FER+ folder.
        out_dir: the folder to create.
        config: settings; defaults give 48x48 grayscale faces.
        overwrite: replace ``out_dir`` if it already exists.
        progress: show a progress bar.

    Raises:
        FileNotFoundError: the source does not exist.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is false.
        NoUsableImagesError: nothing in the source could be prepared.
    """
    config = config or PrepareConfig()
    config.validate()
    source, out_dir = Path(source), Path(out_dir)
    if not source.exists():
        raise FileNotFoundError(
            f"{source}: source not found; give an image folder, a fer2013.csv file or a "
            "FER+ folder (see data/README.md for how to obtain them)"
        )
    with output_folder(out_dir, "prepare", overwrite=overwrite, inputs=[source]) as staging:
        manifest = _prepare_into(source, staging, config, progress)
    return PrepareResult(out_dir=out_dir, manifest=manifest)


def _prepare_into(
    source: Path, staging: Path, config: PrepareConfig, progress: bool
) -> dict[str, Any]:
    started = time.perf_counter()
    listing = list_source(source, config.format, config.ferplus_mode)
    items = listing.items
    logger.info("%s: %d items in %s format", source, len(items), listing.format)

    if config.faces != "crop" and any(not item.tight_crop for item in items):
        from ferkit.faces import check_detector_available

        # Before any work: a missing detector library fails here, not once per image.
        check_detector_available(config.detector)
    workers = config.workers or os.cpu_count() or 1
    outcomes = list(_run_items(items, config, workers, progress))
    skipped = list(listing.skipped)
    kept: list[tuple[Item, _Outcome]] = []
    for item, outcome in zip(items, outcomes, strict=True):
        if outcome.face is None:
            skipped.append(
                Skipped(
                    item.name, outcome.kind or "unreadable", outcome.reason, item.split, item.label
                )
            )
        else:
            kept.append((item, outcome))
    if not kept:
        raise NoUsableImagesError(_no_usable_message(source, skipped))

    split_origin, warnings = _assign_splits(kept, config)
    duplicates = _find_duplicates(kept)
    if config.dedupe:
        kept, dropped = _dedupe(kept)
        skipped.extend(dropped)

    classes = listing.classes or _class_list(kept)
    class_index = {name: index for index, name in enumerate(classes)}
    splits = [split for split in SPLIT_ORDER if any(item.split == split for item, _ in kept)]

    split_summary = {}
    for split in splits:
        members = [(item, outcome) for item, outcome in kept if item.split == split]
        labels = np.array([class_index[item.label] for item, _ in members], dtype=np.int64)
        arrays = {
            "images": np.stack([outcome.face for _, outcome in members]),
            "labels": labels,
            "paths": np.array([item.name for item, _ in members]),
        }
        if config.soft_labels:
            arrays["soft_labels"] = _soft_labels(members, class_index, len(classes))
        _write_split(staging / f"{split}.npz", arrays, config.compress)
        counts = np.bincount(labels, minlength=len(classes))
        split_summary[split] = {
            "file": f"{split}.npz",
            "count": len(members),
            "per_class": {name: int(counts[i]) for i, name in enumerate(classes)},
        }
    manifest = {
        "ferkit_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": path_text(source.resolve()),
        "format": listing.format,
        "source_hash": _source_hash(listing, list(zip(items, outcomes, strict=True))),
        "classes": classes,
        "class_names_in_source": {
            name: sorted(listing.source_names.get(name, {name})) for name in classes
        },
        "image_shape": [config.size, config.size, config.channels],
        "settings": asdict(config),
        "split_origin": split_origin,
        "splits": split_summary,
        "warnings": warnings,
        "face_modes": dict(Counter(outcome.mode for _, outcome in kept)),
        "skipped_counts": dict(sorted(Counter(s.kind for s in skipped).items())),
        "failed": sum(s.kind in FAILURE_KINDS for s in skipped),
        "skipped": [s.as_dict() for s in skipped],
        "duplicates": duplicates,
        "seconds": round(time.perf_counter() - started, 2),
        "peak_memory_mb": peak_memory_mb(),
    }
    (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _assign_splits(
    kept: list[tuple[Item, _Outcome]], config: PrepareConfig
) -> tuple[str, list[str]]:
    """Keep the source's splits; split seeded and stratified where it has none.

    Returns:
        How the splits came about, and warnings about requested splits that ended empty.
    """
    has_splits = any(item.split for item, _ in kept)
    if not has_splits:
        val = 0.1 if config.val_fraction is None else config.val_fraction
        test = 0.1 if config.test_fraction is None else config.test_fraction
        labels = np.array([item.label for item, _ in kept])
        for (item, _), split in zip(
            kept, stratified_split(labels, val, test, config.seed), strict=True
        ):
            item.split = split
        origin = f"seeded stratified split (seed {config.seed}, val {val}, test {test})"
        return origin, _empty_split_warnings(kept, {"val": val, "test": test})
    # A source with splits that lacks val or test can have them carved out of train,
    # but only on request: the source's own split is what papers report against.
    carve = {}
    present = {item.split for item, _ in kept}
    if "val" not in present and config.val_fraction:
        carve["val"] = config.val_fraction
    if "test" not in present and config.test_fraction:
        carve["test"] = config.test_fraction
    if not carve or "train" not in present:
        return "source", []
    train = [item for item, _ in kept if item.split == "train"]
    labels = np.array([item.label for item in train])
    assignment = stratified_split(
        labels, carve.get("val", 0.0), carve.get("test", 0.0), config.seed
    )
    for item, split in zip(train, assignment, strict=True):
        item.split = split
    origin = f"source, with {' and '.join(sorted(carve))} carved from train (seed {config.seed})"
    return origin, _empty_split_warnings(kept, carve)


def _empty_split_warnings(
    kept: list[tuple[Item, _Outcome]], fractions: dict[str, float]
) -> list[str]:
    """Say which requested splits ended up empty, and why."""
    warnings = []
    for split, fraction in fractions.items():
        if fraction <= 0 or any(item.split == split for item, _ in kept):
            continue
        sizes = Counter(item.label for item, _ in kept)
        smallest_needed = math.ceil(0.5 / fraction)
        while round(smallest_needed * fraction) < 1:  # round() halves to even
            smallest_needed += 1
        warnings.append(
            f"the {split} split is empty: {fraction:g} of each class rounds to no image when a "
            f"class has fewer than {smallest_needed} (largest class here: "
            f"{max(sizes.values())}); add images, or pass a larger --{split}-fraction "
            f"(ferkit train carves a validation split from train when there is none)"
        )
    return warnings


def _class_list(kept: list[tuple[Item, _Outcome]]) -> list[str]:
    from ferkit.classes import class_order

    return class_order(item.label for item, _ in kept)


def _soft_labels(
    members: list[tuple[Item, _Outcome]], class_index: dict[str, int], n_classes: int
) -> np.ndarray:
    soft = np.zeros((len(members), n_classes), dtype=np.float32)
    for row, (item, _) in enumerate(members):
        if item.votes is not None and item.votes.sum() > 0:
            soft[row] = item.votes / item.votes.sum()
        else:
            soft[row, class_index[item.label]] = 1.0
    return soft


def _no_usable_message(source: Path, skipped: list[Skipped]) -> str:
    if not skipped:
        return f"{source}: holds no images; expected class folders of images, a fer2013.csv or FER+"
    counts = Counter(s.kind for s in skipped)
    examples = "; ".join(f"{s.name}: {s.reason}" for s in skipped[:3])
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.most_common())
    return (
        f"{source}: no usable image ({summary}). For example: {examples}. "
        "Check that the path points at the dataset and that its files are images."
    )


def format_summary(result: PrepareResult, max_examples: int = 5) -> str:
    """A readable summary of a prepare run, for the end of the CLI output."""
    manifest = result.manifest
    tail = (
        [f"  {format_memory(manifest['peak_memory_mb'])}"] if "peak_memory_mb" in manifest else []
    )
    failed = manifest.get("failed", 0)
    if failed:
        tail.append(
            f"  {failed} input(s) failed (kinds: {', '.join(sorted(FAILURE_KINDS & set(manifest['skipped_counts'])))}); "
            "the run completed without them (exit status 3)"
        )
    lines = [
        f"Prepared {manifest['format']} source {manifest['source']}",
        f"  into {result.out_dir}  ({manifest['seconds']} s, splits: {manifest['split_origin']})",
        f"  classes ({len(manifest['classes'])}): {', '.join(manifest['classes'])}",
    ]
    for split, info in manifest["splits"].items():
        per_class = ", ".join(f"{name} {count}" for name, count in info["per_class"].items())
        lines.append(f"  {split:<5} {info['count']:>7} faces  ({per_class})")
    for warning in manifest.get("warnings", []):
        lines.append(f"  warning: {warning}")
    duplicates = manifest["duplicates"]
    if duplicates["groups_within_split"] or duplicates["groups_across_splits"]:
        lines.append(
            f"  duplicates: {duplicates['groups_within_split']} groups within a split, "
            f"{duplicates['groups_across_splits']} across splits "
            f"({duplicates['groups_with_conflicting_labels']} with conflicting labels)"
            + ("" if manifest["settings"]["dedupe"] else "; --dedupe removes them")
        )
    skipped = manifest["skipped"]
    if not skipped:
        lines.append("  skipped: nothing")
    else:
        lines.append(f"  skipped {len(skipped)} items (all listed in manifest.json):")
        by_kind: dict[str, list[dict]] = defaultdict(list)
        for entry in skipped:
            by_kind[entry["kind"]].append(entry)
        for kind, entries in sorted(by_kind.items()):
            lines.append(f"    {kind}: {len(entries)}")
            for entry in entries[:max_examples]:
                lines.append(f"      {entry['path']}: {entry['reason']}")
            if len(entries) > max_examples:
                lines.append(f"      ... and {len(entries) - max_examples} more")
    return "\n".join(lines + tail)
