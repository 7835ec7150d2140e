import numpy as np
import pytest

from ferkit.data.dataset import PreparedDataset, load_split


def test_numpy_split(drawn):
    data = PreparedDataset(drawn)
    train = data.split("train")
    assert train.images.dtype == np.uint8 and train.images.shape[1:] == (48, 48, 1)
    assert len(train) == data.manifest["splits"]["train"]["count"]
    assert train.one_hot().shape == (len(train), len(data.classes))
    assert load_split(drawn, "val").labels.tolist() == data.split("val").labels.tolist()


def test_tf_dataset_batches_every_example_once(drawn):
    data = PreparedDataset(drawn)
    dataset = data.tf_dataset("train", batch_size=7, shuffle=True, seed=0)
    images, labels = [], []
    for batch_images, batch_labels in dataset:
        assert batch_images.dtype.name == "uint8"
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    labels = np.concatenate(labels)
    assert sorted(labels.tolist()) == sorted(data.split("train").labels.tolist())
    assert np.concatenate(images).shape == data.split("train").images.shape


def test_soft_targets_need_soft_labels(drawn):
    with pytest.raises(ValueError, match="--soft-labels"):
        PreparedDataset(drawn).tf_dataset("train", soft=True)


def test_unknown_split_and_folder(drawn, tmp_path):
    with pytest.raises(KeyError, match="no split 'bogus'"):
        PreparedDataset(drawn).split("bogus")
    with pytest.raises(FileNotFoundError, match="ferkit prepare"):
        PreparedDataset(tmp_path)
