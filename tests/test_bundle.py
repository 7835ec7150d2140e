import json

import numpy as np
import pytest
from conftest import tiny_train_config

from ferkit.cli import main
from ferkit.data.dataset import PreparedDataset
from ferkit.models.folder import ChecksumError, load_model
from ferkit.release.bundle import bundle_run
from ferkit.release.model_card import write_model_card
from ferkit.training.trainer import train


@pytest.fixture
def finished_run(drawn_run, drawn):
    """The session's one-epoch run on the drawn dataset, and that dataset."""
    return drawn_run, drawn


def test_bundle_loads_with_checksums_and_calibrated_probabilities(finished_run, tmp_path):
    run, data = finished_run
    val = PreparedDataset(data).split("val")
    card = write_model_card(run, val, load_model(run))
    assert "## Limitations" in card and "| happy |" in card
    dest = bundle_run(run, tmp_path / "default", model_card=card)
    assert dest.stat().st_mode & 0o755 == 0o755  # readable once installed
    checksums = json.loads((dest / "checksums.json").read_text())
    assert set(checksums) >= {
        "model.keras",
        "labels.json",
        "calibration.json",
        "config.yaml",
        "MODEL_CARD.md",
    }
    loaded = load_model(dest)
    assert loaded.classes == ["angry", "happy", "sad", "surprise"]
    assert loaded.temperature == json.loads((run / "calibration.json").read_text())["temperature"]
    probabilities = loaded.predict_proba(val.images)
    assert probabilities.shape == (len(val), 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    # The bundle and the run agree.
    np.testing.assert_allclose(
        load_model(run).predict_logits(val.images), loaded.predict_logits(val.images), rtol=1e-5
    )
    # No optimizer state in the bundle: smaller than the training checkpoint.
    assert (dest / "model.keras").stat().st_size < (
        run / "checkpoints" / "best.keras"
    ).stat().st_size


def test_damaged_bundle_is_refused(finished_run, tmp_path):
    run, _ = finished_run
    dest = bundle_run(run, tmp_path / "default")
    labels = dest / "labels.json"
    labels.write_text(labels.read_text().replace("happy", "joyful"))
    with pytest.raises(ChecksumError, match="restore the original file") as caught:
        load_model(dest)
    assert "reinstall ferkit" not in str(caught.value)  # a folder of the user's


def test_bundle_replaces_only_an_earlier_bundle(finished_run, tmp_path):
    run, _ = finished_run
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("irreplaceable")
    with pytest.raises(FileExistsError, match="replaces only an earlier bundle"):
        bundle_run(run, mine)
    assert (mine / "thesis.tex").read_text() == "irreplaceable"
    first = bundle_run(run, tmp_path / "bundle")
    assert bundle_run(run, first) == first  # an earlier bundle is replaced
    assert load_model(first).classes


def test_unfinished_run_cannot_be_bundled(finished_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="bundle only a finished run"):
        bundle_run(tmp_path, tmp_path / "dest")
    with pytest.raises(FileNotFoundError, match="no model found"):
        load_model(tmp_path)


def test_bundle_command(finished_run, tmp_path, capsys):
    run, _ = finished_run
    assert main(["bundle", str(run), "--dest", str(tmp_path / "b")]) == 0
    assert "Accuracy" in capsys.readouterr().out
    assert (tmp_path / "b" / "MODEL_CARD.md").is_file()
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["val_accuracy_floor"] == int(metrics["val_accuracy_bundled"] * 100) / 100


def _fine_tune(parent, data, out):
    """One epoch started from ``parent``'s weights (a run with ``init_from``)."""
    train(tiny_train_config(data, init_from=str(parent)), out, verbose=0)


def test_model_card_of_a_fine_tuned_run_names_its_parent(finished_run, tmp_path):
    run, data = finished_run
    _fine_tune(run, data, tmp_path / "tuned")
    val = PreparedDataset(data).split("val")
    card = write_model_card(tmp_path / "tuned", val, load_model(tmp_path / "tuned"))
    parent = json.loads((run / "metrics.json").read_text())
    assert f"Started from the weights of `{run}`" in card
    assert f"trained for {parent['epochs_trained']} epochs" in card and "h in all" in card


def test_card_names_the_hardware_of_a_gpu_parent_and_appends_notes(finished_run, tmp_path):
    import shutil

    run, data = finished_run
    parent = tmp_path / "gpu_parent"
    shutil.copytree(run, parent)
    metrics = json.loads((parent / "metrics.json").read_text())
    metrics["trained_on"] = "1 NVIDIA H200 GPU, torch engine (PyTorch 2.11.0)"
    (parent / "metrics.json").write_text(json.dumps(metrics))
    _fine_tune(parent, data, tmp_path / "tuned")
    notes = tmp_path / "notes.md"
    notes.write_text("## How it was trained\nTwo steps.\n")
    argv = ["bundle", str(tmp_path / "tuned"), "--dest", str(tmp_path / "b")]
    assert main([*argv, "--card-notes", str(notes)]) == 0
    card = (tmp_path / "b" / "MODEL_CARD.md").read_text()
    assert "min on 1 NVIDIA H200 GPU, torch engine" in card
    assert "## How it was trained\nTwo steps." in card
    assert card.index("## Limitations") < card.index("## How it was trained")


def test_bundle_into_a_new_nested_folder(finished_run, tmp_path):
    run, _ = finished_run
    dest = bundle_run(run, tmp_path / "not" / "yet" / "there")
    assert load_model(dest).classes


def test_bundle_records_further_evaluations_in_its_metrics_and_card(finished_run, tmp_path, capsys):
    run, data = finished_run
    evaluated = tmp_path / "evaluated"
    argv = ["evaluate", "--model", str(run), "--data", str(data), "--split", "val", "--quiet"]
    assert main([*argv, "--out", str(evaluated)]) == 0
    figures = json.loads((evaluated / "metrics.json").read_text())
    bundle = ["bundle", str(run), "--dest", str(tmp_path / "b")]
    assert main([*bundle, "--evaluation", f"drawn val, again={evaluated}"]) == 0
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    [entry] = metrics["evaluations"]
    assert entry["name"] == "drawn val, again" and entry["faces"] == figures["faces"]
    assert entry["accuracy"] == figures["accuracy"] and entry["ece"] == figures["ece"]
    assert metrics["selected_on"].endswith(" val")
    card = (tmp_path / "b" / "MODEL_CARD.md").read_text()
    row = f"| drawn val, again | {figures['faces']:,} | {figures['accuracy']:.2%} |"
    assert "## Further evaluations" in card and row in card
    # An evaluation of another model (here the bundled default) is refused, and nothing
    # is bundled.
    other = tmp_path / "other"
    assert (
        main(["evaluate", "--data", str(data), "--split", "val", "--quiet", "--out", str(other)])
        == 0
    )
    capsys.readouterr()
    assert main([*bundle[:3], str(tmp_path / "c"), "--evaluation", str(other)]) == 2
    assert "not the model of" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_bundle_card_shows_the_robustness_table(finished_run, tmp_path):
    run, data = finished_run
    evaluated = tmp_path / "robust"
    argv = ["evaluate", "--model", str(run), "--data", str(data), "--split", "val", "--quiet"]
    assert main([*argv, "--corruptions", "--out", str(evaluated)]) == 0
    report = json.loads((evaluated / "metrics.json").read_text())["robustness"]
    assert main(["bundle", str(run), "--dest", str(tmp_path / "b"),
                 "--evaluation", f"drawn val={evaluated}"]) == 0  # fmt: skip
    [entry] = json.loads((tmp_path / "b" / "metrics.json").read_text())["evaluations"]
    assert entry["robustness"]["mean"]["accuracy"] == report["mean"]["accuracy"]
    card = (tmp_path / "b" / "MODEL_CARD.md").read_text()
    assert "## Robustness (drawn val, `ferkit evaluate --corruptions`)" in card
    jpeg = [row for row in report["conditions"] if row["shift"] == "jpeg"]
    assert f"| jpeg | {jpeg[0]['accuracy']:.2%} (quality 30) |" in card
    assert f"| **mean over all shifts** | | | | **{report['mean']['accuracy']:.2%}** |" in card


def test_evaluations_are_added_to_an_existing_bundle(finished_run, tmp_path, capsys):
    from ferkit.models.folder import sha256_file as verify_sha
    from ferkit.models.folder import verify_checksums

    run, data = finished_run
    bundle = tmp_path / "bundle"
    assert main(["bundle", str(run), "--dest", str(bundle)]) == 0
    model_bytes = (bundle / "model.onnx").read_bytes()
    evaluated = tmp_path / "robust"
    argv = ["evaluate", "--model", str(bundle), "--data", str(data), "--split", "val", "--quiet"]
    assert main([*argv, "--corruptions", "--out", str(evaluated)]) == 0
    report = json.loads((evaluated / "metrics.json").read_text())["robustness"]
    for _ in range(2):  # a second time replaces the entry of the same name
        assert main(["bundle", str(bundle), "--evaluation", f"drawn val={evaluated}"]) == 0
    [entry] = json.loads((bundle / "metrics.json").read_text())["evaluations"]
    assert entry["robustness"]["mean"]["accuracy"] == report["mean"]["accuracy"]
    card = (bundle / "MODEL_CARD.md").read_text()
    assert card.count("## Robustness (drawn val") == 1
    assert (
        card.index("## Further evaluations")
        < card.index("## Robustness")
        < card.index("## Training")
    )
    verify_checksums(bundle)
    assert (bundle / "model.onnx").read_bytes() == model_bytes
    capsys.readouterr()
    assert main(["bundle", str(bundle), "--dest", str(tmp_path / "x"), "--evaluation", str(evaluated)]) == 2  # fmt: skip
    assert "not a run" in capsys.readouterr().err
    # An evaluation of a model file that changed since is refused.
    stale = json.loads((evaluated / "metrics.json").read_text())
    stale["model"]["sha256"] = "sha256:" + "0" * 64
    (evaluated / "metrics.json").write_text(json.dumps(stale))
    assert main(["bundle", str(bundle), "--evaluation", str(evaluated)]) == 2
    assert "changed since it was evaluated" in capsys.readouterr().err
    # A damaged bundle is not signed again.
    stale["model"]["sha256"] = "sha256:" + verify_sha(bundle / "model.onnx")
    (evaluated / "metrics.json").write_text(json.dumps(stale))
    with open(bundle / "labels.json", "a") as handle:
        handle.write(" ")
    before = (bundle / "checksums.json").read_text()
    assert main(["bundle", str(bundle), "--evaluation", str(evaluated)]) != 0
    assert "labels.json" in capsys.readouterr().err
    assert (bundle / "checksums.json").read_text() == before


def test_model_card_names_the_dataset_it_was_trained_on(fer2013_prepared, ferplus_val_prepared):
    from ferkit.release.model_card import dataset_title

    for fixture, title in ((fer2013_prepared, "FER2013"), (ferplus_val_prepared, "FER+")):
        manifest = json.loads((fixture[1].out_dir / "manifest.json").read_text())
        assert dataset_title(manifest) == title
    assert dataset_title({"format": "folder", "source": "/data/my_faces"}) == "my_faces"


@pytest.mark.parametrize("tolerance", [1.0, -1.0], ids=["kept", "lost"])
def test_bundle_with_the_litert_default_makes_its_int8_file_and_applies_the_rule(
    finished_run, tmp_path, capsys, monkeypatch, tolerance
):
    """--default-runtime tflite-int8 bundles model.int8.tflite (calibrated on the run's
    training faces) and scores it on val: the bundle takes it as its default when it is
    within the tolerance of float32 (here set so that it is, then so that it is not), and
    otherwise nothing is bundled."""
    import ferkit.release.bundle
    from ferkit.inference.runtimes import TFLiteModel, default_backend, load_classifier

    monkeypatch.setattr(ferkit.release.bundle, "INT8_TOLERANCE", tolerance)
    run, _ = finished_run
    dest = tmp_path / "b"
    code = main(["bundle", str(run), "--dest", str(dest), "--default-runtime", "tflite-int8"])
    err = capsys.readouterr().err
    if tolerance > 0:
        assert code == 0, err
        runtimes = json.loads((dest / "metrics.json").read_text())["runtimes"]
        assert 0 < runtimes["model.int8.tflite"]["val_accuracy"] <= 1
        assert default_backend(dest) == "tflite-int8"
        assert isinstance(load_classifier(dest), TFLiteModel)
        assert "Prediction uses int8 LiteRT" in (dest / "MODEL_CARD.md").read_text()
    else:
        assert code == 2 and "model.int8.tflite scores" in err, err
        assert "float32 stays the default" in err and not dest.exists()
    assert not any(path.name.startswith(".b") for path in tmp_path.iterdir())  # no staging
