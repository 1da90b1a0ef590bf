"""The registry: names, splits, sizes known without files, and the sensitive flag."""

import numpy as np
import pytest

from privimage.config import DataConfig, load_config
from privimage.data import REGISTRY, dataset_info, list_datasets, load_dataset, load_sensitive_train
from privimage.errors import ConfigError, DataError

# Published sizes: what a --dry-run needs to compute privacy parameters without the data.
KNOWN = [
    ("cifar10", "train", 50_000, [3, 32, 32], 10),
    ("cifar10", "test", 10_000, [3, 32, 32], 10),
    ("mnist", "train", 60_000, [1, 32, 32], 10),
    ("fashionmnist", "test", 10_000, [1, 32, 32], 10),
    ("celeba32", "train", 162_770, [3, 32, 32], 1),
    ("celeba64", "test", 19_962, [3, 64, 64], 1),
    ("imagenet32", "train", 1_281_167, [3, 32, 32], 1000),
    ("imagenet64", "val", 50_000, [3, 64, 64], 1000),
    ("imagenet32-folder", "val", 50_000, [3, 32, 32], 1000),
]


@pytest.mark.parametrize("name, split, num_images, shape, num_classes", KNOWN)
def test_info_without_files(tmp_path, name, split, num_images, shape, num_classes):
    info = dataset_info(name, split, data_root=tmp_path)
    assert (info["num_images"], info["image_shape"], info["num_classes"]) == (num_images, shape, num_classes)
    assert info["available"] is False and info["source"] == "registry"
    assert info["expected_path"].startswith(str(tmp_path)) and info["expected_files"]


def test_embedded_info_matches_what_loads():
    for split in ("train", "test"):
        info = dataset_info("mnist5k", split)
        dataset = load_dataset("mnist5k", split, config=DataConfig(sensitive="cifar10"))
        assert info["num_images"] == len(dataset) and info["image_shape"] == list(dataset.image_shape)
        assert info["class_names"] == list(dataset.class_names)


def test_glyphs_info_follows_the_config_without_rendering(isolated_cache):
    info = dataset_info("glyphs1k", "val", config=DataConfig(glyphs_val_per_class=3))
    assert info["num_images"] == 3000 and info["num_classes"] == 1000
    # Only the class table (names, faces) may be cached; no image was rendered.
    assert not [p for p in isolated_cache.rglob("*") if p.is_file() and not p.name.startswith("classes-")]


def test_list_names_every_dataset(tmp_path):
    rows = {row["name"]: row for row in list_datasets(tmp_path)}
    assert set(rows) == set(REGISTRY) >= {"mnist5k", "glyphs1k", "cifar10", "celeba32", "celeba64", "mnist",
                                          "fashionmnist", "imagenet32", "imagenet64"}
    assert rows["mnist5k"]["available"] and not rows["cifar10"]["available"]
    assert rows["cifar10"]["expected_path"] == str(tmp_path / "cifar-10-batches-py")


def test_unknown_dataset_and_split():
    with pytest.raises(DataError, match="unknown dataset 'cifar100'.*known: mnist5k"):
        load_dataset("cifar100", "train")
    with pytest.raises(DataError, match="mnist5k has no split 'val' \\(splits: train, test\\)"):
        load_dataset("mnist5k", "val")
    with pytest.raises(DataError, match="cifar10 has no split 'validation'"):
        dataset_info("cifar10", "validation")


def test_unknown_data_config_key():
    with pytest.raises(ConfigError, match="unknown key 'data.glyphs_per_class'"):
        load_config("smoke", {"data.glyphs_per_class": 3})
    with pytest.raises(ConfigError, match="data.celeba_attribute"):
        load_config("smoke", {"data.celeba_attribute": 3})


def test_sensitive_training_split_is_flagged():
    config = load_config("smoke")
    sensitive = load_sensitive_train(config)
    assert sensitive.sensitive and sensitive.name == config.data.sensitive and sensitive.split == "train"
    # Loading the same split by name still flags it; the test split is never flagged.
    assert load_dataset(config.data.sensitive, "train", config=config.data).sensitive
    assert not load_dataset(config.data.sensitive, "test", config=config.data).sensitive
    # The same images in a role other than sensitive are not flagged.
    other = load_dataset("mnist5k", "train", config=DataConfig(sensitive="cifar10"))
    assert not other.sensitive
    np.testing.assert_array_equal(other.images, sensitive.images)


def test_sensitive_own_dataset_is_flagged(tmp_path):
    np.savez(tmp_path / "mine.npz", x=np.zeros((3, 8, 8, 1), np.uint8), y=np.array([0, 1, 0]))
    config = load_config("smoke", {"data.sensitive": "npz:mine.npz"})
    assert load_sensitive_train(config, data_root=tmp_path).sensitive
