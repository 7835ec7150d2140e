"""Shared fixtures: the real data folder, the datasets every module shares (each made
once per test session, in pytest's temporary folder) and small image writers.

Under pytest-xdist (``scripts/test.sh`` runs the suite on every core) the workers of one
session build each dataset once between them: the first worker to ask builds it beside
their temporary folders while holding a lock, the others wait and read it.

Session datasets are read-only for tests: one that must change a dataset works on a copy
(``drawn_copy``, or ``shutil.copytree``). Each is checked at the end of the session, and
a test that changed one makes that check fail.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ferkit.evaluation.benchmark import shared_dir
from ferkit.training.config import TrainConfig

SHARED = shared_dir()
TINY_MODEL = {"arch": "ferkit_cnn", "widths": [8, 16, 32, 64], "blocks_per_stage": 1}

#: Faces per class of the shared drawn dataset (``drawn``).
DRAWN_PER_CLASS = 60


#: The modules that take longest (``pytest --durations=0``), longest first. Under xdist
#: they are handed out first, so that no worker is left running a long module alone at
#: the end while the others wait.
LONG_MODULES = (
    "test_train.py",
    "test_torch_engine.py",
    "test_ray_engine.py",
    "test_train_safety.py",
    "test_examples.py",
    "test_serve_browser.py",
    "test_train_init_pipeline.py",
    "test_bundled_model.py",
    "test_serve.py",
    "test_notebooks.py",
    "test_bundle.py",
    "test_installed_models.py",
    "test_robustness.py",
    "test_entry_points.py",
    "test_framing.py",
    "test_export.py",
    "test_serve_process.py",
)


def _share_the_cores_between_workers() -> None:
    """Under xdist, give each worker's TensorFlow, PyTorch and OpenMP (and the processes
    its tests start, which inherit the environment) its share of the cores: left at their
    defaults, every worker's thread pools take all cores, and on a machine with as many
    cores as workers the pools fight over them (training ran about a fifth slower)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if "PYTEST_XDIST_WORKER" not in os.environ or workers < 2:
        return
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ.setdefault(name, threads)


def pytest_configure(config: pytest.Config) -> None:
    """Share the cores between xdist workers, and hand modules to the workers in the
    order of ``LONG_MODULES`` below (xdist would otherwise reorder them by their number
    of tests, which is not their length)."""
    _share_the_cores_between_workers()
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the modules of ``LONG_MODULES`` first, in that order; the rest keep theirs."""
    rank = {name: index for index, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def tiny_train_config(data: str | os.PathLike[str], **overrides) -> TrainConfig:
    """Settings for a seconds-long test run on ``data``: a tiny ferkit_cnn, one epoch of
    batches of 32, no warm-up; ``overrides`` replace any field."""
    values = {
        "data": str(data),
        "model": dict(TINY_MODEL),
        "epochs": 1,
        "batch_size": 32,
        "warmup_epochs": 0,
    }
    return TrainConfig(**{**values, **overrides})


def require_shared(*parts: str) -> Path:
    """Return a path inside the shared data folder, or skip when this machine lacks it.

    CI always has it, so there (CI=true) a missing folder fails instead of skipping.
    """
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{path} not found in CI; the shared data must sit beside the clone")
        pytest.skip(f"{path} not found; set FERKIT_SHARED to the shared data folder")
    return path


def write_gray(path: Path, value: int, size: int = 48, seed: int | None = None) -> Path:
    """Write a grayscale image: flat ``value``, or noise around it when ``seed`` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if seed is None:
        pixels = np.full((size, size), value, dtype=np.uint8)
    else:
        rng = np.random.default_rng(seed)
        pixels = np.clip(rng.normal(value, 30, (size, size)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(path)
    return path


def write_truncated_video(source: Path, target: Path, keep_bytes: int = 150_000) -> Path:
    """``source``, an MP4 whose index (its ``moov`` box) follows its frames, cut after
    ``keep_bytes`` bytes with the index kept: the header still announces every frame and
    the stream ends early (woman2.mp4: 464 frames announced, 48 read), as in a download
    or a recording that broke off."""
    data = source.read_bytes()
    boxes, at = {}, 0
    while at + 8 <= len(data):  # the top-level boxes: ftyp, free, mdat (the frames), moov
        size = int.from_bytes(data[at : at + 4], "big")
        boxes[data[at + 4 : at + 8]] = at
        at += size
    frames_at, index_at = boxes[b"mdat"], boxes[b"moov"]
    assert frames_at < keep_bytes < index_at
    new_size = (keep_bytes - frames_at).to_bytes(4, "big")  # so the index follows at once
    cut = data[:frames_at] + new_size + data[frames_at + 4 : keep_bytes]
    target.write_bytes(cut + data[index_at:])
    return target


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder named ``name`` in which ``build(folder)`` has run once in this session.

    Without xdist this is a fresh temporary folder. Under xdist, the workers share one
    folder beside their own temporary folders; a lock makes the first worker build it and
    the others wait, and a build that failed part-way is started again from scratch.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    root = tmp_path_factory.getbasetemp().parent
    folder, done = root / name, root / f"{name}.built"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


def _read_prepared(out: Path):
    """The PrepareResult of the dataset ``prepare`` wrote at ``out``."""
    from ferkit.data.prepare import PrepareResult

    return PrepareResult(out, json.loads((out / "manifest.json").read_text()))


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: size and modification time (a cheap change check)."""
    return {
        str(path.relative_to(folder)): (path.lstat().st_size, path.lstat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
    }


def _check_unchanged(folder: Path, before: dict[str, tuple[int, int]]) -> None:
    """Fail if a test added, removed or rewrote a file of a session dataset."""
    changed = sorted(set(before.items()) ^ set(_snapshot(folder).items()))
    assert not changed, (
        f"a test changed the shared session dataset {folder} ({changed[:5]}); "
        "tests that modify data must work on a copy"
    )


@pytest.fixture
def shared() -> Path:
    return require_shared()


# --- real data: FER2013 and FER+ prepared once per session ---------------------------


@pytest.fixture(scope="session")
def fer2013_prepared(tmp_path_factory):
    """The shared FER2013 (train and val) prepared once per test session:
    (source folder, PrepareResult). Every test that needs prepared FER2013 uses this."""
    from ferkit.data.prepare import prepare

    source = require_shared("datasets", "fer2013")
    folder = built_once(
        tmp_path_factory, "fer2013", lambda f: prepare(source, f / "prepared", progress=False)
    )
    result = _read_prepared(folder / "prepared")
    before = _snapshot(result.out_dir)
    yield source, result
    _check_unchanged(result.out_dir, before)


@pytest.fixture(scope="session")
def ferplus_val_prepared(tmp_path_factory):
    """FER+'s validation folder (FER2013Valid) prepared once per session, its vote
    distributions kept as soft labels: (source folder, PrepareResult)."""
    from ferkit.data.prepare import PrepareConfig, prepare

    source = require_shared("datasets", "ferplus", "FER2013Valid")
    settings = PrepareConfig(soft_labels=True)
    folder = built_once(
        tmp_path_factory,
        "ferplus",
        lambda f: prepare(source, f / "prepared", settings, progress=False),
    )
    result = _read_prepared(folder / "prepared")
    before = _snapshot(result.out_dir)
    yield source, result
    _check_unchanged(result.out_dir, before)


@pytest.fixture(scope="session")
def bundled_onnx_on_fer2013_val(fer2013_prepared, tmp_path_factory) -> np.ndarray:
    """The bundled model's probabilities on every FER2013 val face, run by float32 ONNX
    Runtime (the same outputs as Keras) once per session: the reference that the other
    runtimes and exports are compared with."""
    from ferkit.data.dataset import load_split
    from ferkit.inference.runtimes import load_classifier

    _, result = fer2013_prepared

    def build(folder: Path) -> None:
        images = load_split(result.out_dir, "val").images
        np.save(folder / "probabilities.npy", load_classifier(None, "onnx").predict_proba(images))

    folder = built_once(tmp_path_factory, "bundled_onnx_val", build)
    return np.load(folder / "probabilities.npy")


#: Faces per class of the small real subset (``fer2013_subset``): train, and at most
#: this many of val (FER2013 has 56 disgust faces in val).
SUBSET_TRAIN_PER_CLASS = 80
SUBSET_VAL_PER_CLASS = 50


@pytest.fixture(scope="session")
def fer2013_subset(fer2013_prepared, ferplus_val_prepared, tmp_path_factory):
    """A small real subset, for the notebooks and the evaluation report: FER2013 with
    80 train faces per class and up to 50 val faces per class, chosen (seeded) among the
    val faces that FER+ relabelled, and FER+'s val holding exactly those faces.

    Both are prepared by ``ferkit prepare`` from folders of links to the shared files,
    once per session. Returns a namespace: ``fer2013`` and ``ferplus`` (PrepareResult
    each).
    """
    from ferkit.data.dataset import PreparedDataset
    from ferkit.data.matching import match_faces
    from ferkit.data.prepare import prepare

    fer_source, fer_result = fer2013_prepared
    plus_source, plus_result = ferplus_val_prepared

    def build(root: Path) -> None:
        fer = PreparedDataset(fer_result.out_dir)
        plus_val = PreparedDataset(plus_result.out_dir).split("val")
        rng = np.random.default_rng(0)
        chosen: list[str] = []
        train = fer.split("train")
        for label in range(len(fer.classes)):
            members = np.flatnonzero(train.labels == label)
            picked = rng.choice(members, SUBSET_TRAIN_PER_CLASS, replace=False)
            chosen += train.paths[picked].tolist()
        val = fer.split("val")
        in_fer, in_plus = match_faces(val.images, plus_val.images)
        plus_names = []
        for label in range(len(fer.classes)):
            matched = np.flatnonzero(val.labels[in_fer] == label)
            take = rng.choice(matched, min(SUBSET_VAL_PER_CLASS, len(matched)), replace=False)
            chosen += val.paths[in_fer[take]].tolist()
            plus_names += [Path(path).name for path in plus_val.paths[in_plus[take]]]
        for relative in chosen:
            link = root / "fer2013" / relative
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(fer_source / relative)
        plus = root / "ferplus" / "FER2013Valid"
        plus.mkdir(parents=True)
        wanted = set(plus_names)
        rows = [
            line
            for line in (plus_source / "label.csv").read_text().splitlines()
            if line.split(",", 1)[0] in wanted
        ]
        assert len(rows) == len(wanted)
        (plus / "label.csv").write_text("\n".join(rows) + "\n")
        for name in wanted:
            (plus / name).symlink_to(plus_source / name)
        prepare(root / "fer2013", root / "prepared" / "fer2013", progress=False)
        prepare(plus, root / "prepared" / "ferplus", progress=False)

    root = built_once(tmp_path_factory, "subset", build)
    subset = SimpleNamespace(
        fer2013=_read_prepared(root / "prepared" / "fer2013"),
        ferplus=_read_prepared(root / "prepared" / "ferplus"),
    )
    before = _snapshot(root / "prepared")
    yield subset
    _check_unchanged(root / "prepared", before)


# --- drawn faces (ferkit.data.synthetic), made and prepared once per session ----------


@pytest.fixture(scope="session")
def drawn_source(tmp_path_factory):
    """The drawn image-folder dataset: four classes of ``DRAWN_PER_CLASS`` faces in mixed
    formats, sizes and colour modes (``ferkit.data.synthetic.make_image_folder``)."""
    from ferkit.data.synthetic import make_image_folder

    folder = built_once(
        tmp_path_factory,
        "drawn",
        lambda f: make_image_folder(f / "src", per_class=DRAWN_PER_CLASS),
    )
    root = folder / "src"
    before = _snapshot(root)
    yield root
    _check_unchanged(root, before)


@pytest.fixture(scope="session")
def drawn(drawn_source, tmp_path_factory):
    """``drawn_source`` prepared (``--faces crop``), once per session: the folder."""
    from ferkit.data.prepare import PrepareConfig, prepare

    folder = built_once(
        tmp_path_factory,
        "drawn_prepared",
        lambda f: prepare(
            drawn_source, f / "prepared", PrepareConfig(faces="crop"), progress=False
        ),
    )
    result = _read_prepared(folder / "prepared")
    before = _snapshot(result.out_dir)
    yield result.out_dir
    _check_unchanged(result.out_dir, before)


@pytest.fixture(scope="session")
def drawn_run(drawn, tmp_path_factory):
    """A finished run of ``tiny_train_config(drawn, seed=7)`` (one epoch), trained once
    per session: a trained model for bundling, distillation and ``--init-from``.
    Tests copy it before changing it."""
    from ferkit.training.trainer import train

    folder = built_once(
        tmp_path_factory,
        "drawn_run",
        lambda f: train(tiny_train_config(drawn, seed=7), f / "run", verbose=0),
    )
    run = folder / "run"
    before = _snapshot(run)
    yield run
    _check_unchanged(run, before)


@pytest.fixture
def drawn_copy(drawn, tmp_path) -> Path:
    """A private copy of the prepared drawn dataset, for a test that changes its data."""
    return Path(shutil.copytree(drawn, tmp_path / "drawn"))


def write_prepared_subset(source: Path, out: Path, keep: dict[str, np.ndarray]) -> Path:
    """Write a prepared dataset at ``out`` holding, of each split of ``source`` named in
    ``keep``, the faces at the given indices (other splits are left out): for skewed
    class counts without preparing again."""
    import json

    from ferkit.data.dataset import MANIFEST_NAME, PreparedDataset

    data = PreparedDataset(source)
    manifest = json.loads((source / MANIFEST_NAME).read_text())
    out.mkdir(parents=True)
    splits = {}
    for name, indices in keep.items():
        split = data.split(name)
        arrays = {
            "images": split.images[indices],
            "labels": split.labels[indices],
            "paths": split.paths[indices],
        }
        if split.soft_labels is not None:
            arrays["soft_labels"] = split.soft_labels[indices]
        info = dict(manifest["splits"][name])
        np.savez(out / info["file"], **arrays)
        counts = np.bincount(arrays["labels"], minlength=len(data.classes))
        info["count"] = len(indices)
        info["per_class"] = {c: int(n) for c, n in zip(data.classes, counts, strict=True)}
        splits[name] = info
    manifest["splits"] = splits
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
    return out
