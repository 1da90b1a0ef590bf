"""Real datasets load from tiny files written in each official on-disk format, and bad files fail clearly."""

import gzip
import os
import pickle
import warnings

import numpy as np
import pytest
from PIL import Image

from privimage.config import DataConfig
from privimage.data import dataset_info, load_dataset
from privimage.errors import DataError

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------- builders of fake on-disk datasets


def write_cifar10(root, per_batch=4):
    """cifar-10-batches-py/ with five train batches, a test batch and batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = RNG.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in RNG.integers(0, 10, per_batch)]
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, handle)
        batches[name] = (data, labels)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch}, handle)
    return batches


def write_imagenet_npz(root, resolution=32, per_batch=3, subfolder=""):
    folder = root / f"imagenet{resolution}" / subfolder
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [f"train_data_batch_{i}.npz" for i in range(1, 11)] + ["val_data.npz"]:
        data = RNG.integers(0, 256, (per_batch, 3 * resolution * resolution), dtype=np.uint8)
        labels = RNG.integers(1, 1001, per_batch)
        np.savez(folder / name, data=data, labels=labels, mean=np.zeros(3 * resolution * resolution))
        written[name] = (data, labels)
    return written


def write_idx(path, array):
    """An idx file (MNIST's format): magic, dimensions, big-endian data."""
    magic = {3: 2051, 1: 2049}[array.ndim]
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root, folder="MNIST", count=6):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        images = RNG.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = RNG.integers(0, 10, count).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return images, labels


def write_celeba(root, count=6):
    """celeba/ with 178x218 faces (white central square on black), partition and attribute files."""
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    partition, attributes = [], []
    for i in range(count):
        name = f"{i + 1:06d}.jpg"
        pixels = np.zeros((218, 178, 3), dtype=np.uint8)
        pixels[20:198, :] = 255  # the central 178x178 square is white
        Image.fromarray(pixels).save(folder / "img_align_celeba" / name, quality=95)
        partition.append(f"{name} {[0, 0, 0, 0, 1, 2][i]}")
        values = ["-1"] * 40
        values[20] = "1" if i % 2 else "-1"  # Male
        attributes.append(f"{name} " + " ".join(values))
    (folder / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")
    from privimage.data.celeba import ATTRIBUTE_NAMES

    (folder / "list_attr_celeba.txt").write_text(f"{count}\n{' '.join(ATTRIBUTE_NAMES)}\n" + "\n".join(attributes) + "\n")


def write_image_folder(root, classes=("cat", "dog"), per_class=3, size=(8, 8), mode="RGB"):
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            value = 40 * (label + 1) + i
            Image.new(mode, size, (value,) * len(mode) if mode != "L" else value).save(root / name / f"{i}.png")


# ----------------------------------------------------------------- CIFAR-10


def test_cifar10_loads_pickle_batches_in_order(tmp_path):
    batches = write_cifar10(tmp_path)
    with pytest.warns(UserWarning, match="checksums"):
        train = load_dataset("cifar10", "train", data_root=tmp_path)
    assert train.images.shape == (20, 3, 32, 32) and train.num_classes == 10
    first_data, first_labels = batches["data_batch_1"]
    # Channel-planar rows: the first 1024 bytes are the red plane.
    np.testing.assert_array_equal(train.images[0, 0].ravel(), first_data[0, :1024])
    np.testing.assert_array_equal(train.images[0, 2].ravel(), first_data[0, 2048:])
    assert list(train.labels[:4]) == first_labels
    assert train.class_names[0] == "airplane"
    with pytest.warns(UserWarning):
        test = load_dataset("cifar10", "test", data_root=tmp_path)
    np.testing.assert_array_equal(test.images.reshape(4, -1), batches["test_batch"][0])


def test_cifar10_info_counts_files_when_present(tmp_path):
    write_cifar10(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = dataset_info("cifar10", "train", data_root=tmp_path)
    assert info["available"] and info["source"] == "files" and info["num_images"] == 20


def test_cifar10_missing_names_folder_and_files(tmp_path):
    with pytest.raises(DataError, match=r"cifar10 not found: .*cifar-10-batches-py lacks data_batch_1.*batches\.meta"):
        load_dataset("cifar10", "train", data_root=tmp_path)


# ----------------------------------------------------------------- ImageNet npz


@pytest.mark.parametrize("subfolder", ["", "Imagenet32_train_npz"])
def test_imagenet32_npz_labels_are_one_based(tmp_path, subfolder):
    written = write_imagenet_npz(tmp_path, subfolder=subfolder)
    train = load_dataset("imagenet32", "train", data_root=tmp_path)
    assert train.images.shape == (30, 3, 32, 32) and train.num_classes == 1000
    data, labels = written["train_data_batch_1.npz"]
    np.testing.assert_array_equal(train.labels[:3], labels - 1)
    np.testing.assert_array_equal(train.images[1, 1].ravel(), data[1, 1024:2048])
    assert train.class_names[0] == "class_0001" and train.class_names[-1] == "class_1000"
    assert dataset_info("imagenet32", "val", data_root=tmp_path)["num_images"] == 3


def test_imagenet_class_names_from_map_clsloc(tmp_path):
    write_imagenet_npz(tmp_path)
    lines = [f"n{label:08d} {label} name_{label}" for label in range(1000, 0, -1)]
    (tmp_path / "imagenet32" / "map_clsloc.txt").write_text("\n".join(lines))
    val = load_dataset("imagenet32", "val", data_root=tmp_path)
    assert val.class_names[0] == "name 1" and val.class_names[999] == "name 1000"


# ----------------------------------------------------------------- damaged files, each named


def _corrupt_cifar10_batch(root):
    write_cifar10(root)
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")


def _cifar10_rows_of_wrong_length(root):
    write_cifar10(root)
    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, handle)


def _missing_imagenet_batch(root):
    write_imagenet_npz(root)
    os.remove(root / "imagenet32" / "train_data_batch_7.npz")


def _corrupt_imagenet_npz(root):
    write_imagenet_npz(root)
    (root / "imagenet32" / "val_data.npz").write_bytes(b"PK\x03\x04 truncated")


def _imagenet32_files_as_imagenet64(root):
    write_imagenet_npz(root, resolution=32)
    os.rename(root / "imagenet32", root / "imagenet64")


def _imagenet_labels_out_of_range(root):
    write_imagenet_npz(root)
    np.savez(root / "imagenet32" / "val_data.npz", data=np.zeros((2, 3072), np.uint8), labels=np.array([0, 5]))


@pytest.mark.parametrize(("damage", "name", "split", "message"), [
    pytest.param(_corrupt_cifar10_batch, "cifar10", "train", "data_batch_3 is not a CIFAR-10 pickle batch",
                 id="cifar10-corrupt-batch"),
    pytest.param(_cifar10_rows_of_wrong_length, "cifar10", "test", r"shape \(2, 100\).*N x 3072",
                 id="cifar10-wrong-row-length"),
    pytest.param(_missing_imagenet_batch, "imagenet32", "train",
                 "imagenet32 not found: .* lacks train_data_batch_7.npz", id="imagenet-missing-batch"),
    pytest.param(_corrupt_imagenet_npz, "imagenet32", "val", "val_data.npz is not a downsampled ImageNet npz",
                 id="imagenet-corrupt-npz"),
    pytest.param(_imagenet32_files_as_imagenet64, "imagenet64", "val", "expected uint8 3 x 12288",
                 id="imagenet-wrong-resolution"),
    pytest.param(_imagenet_labels_out_of_range, "imagenet32", "val", "1-based", id="imagenet-labels-out-of-range"),
])
def test_a_damaged_dataset_file_is_refused_with_what_is_wrong(tmp_path, damage, name, split, message):
    damage(tmp_path)
    with pytest.raises(DataError, match=message):
        load_dataset(name, split, data_root=tmp_path)


def test_imagenet_folder_is_box_resized(tmp_path):
    root = tmp_path / "imagenet" / "val"
    write_image_folder(root, classes=("n01440764", "n01443537"), size=(40, 20))
    (tmp_path / "imagenet" / "map_clsloc.txt").write_text("n01440764 449 tench\nn01443537 450 goldfish\n")
    val = load_dataset("imagenet32-folder", "val", data_root=tmp_path)
    assert val.images.shape == (6, 3, 32, 32)
    assert val.class_names == ("tench", "goldfish")
    assert val.images[0].min() == val.images[0].max() == 40


# ----------------------------------------------------------------- MNIST / FashionMNIST (torchvision)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_mnist_idx_files_read_by_torchvision_and_padded(tmp_path, name, folder):
    images, labels = write_mnist(tmp_path, folder)
    test = load_dataset(name, "test", data_root=tmp_path)
    assert test.images.shape == (6, 1, 32, 32)
    np.testing.assert_array_equal(test.images[:, 0, 2:30, 2:30], images)
    assert test.images[:, :, :2].max() == 0
    np.testing.assert_array_equal(test.labels, labels)


def test_mnist_truncated_idx_file(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="mnist: cannot read"):
        load_dataset("mnist", "train", data_root=tmp_path)


# ----------------------------------------------------------------- CelebA


def test_celeba_center_crop_resize_and_partition(tmp_path):
    write_celeba(tmp_path)
    train = load_dataset("celeba32", "train", data_root=tmp_path)
    assert train.images.shape == (4, 3, 32, 32) and train.class_names == ("face",)
    # The black bands above and below the central square are cropped away.
    assert train.images.min() > 200
    assert len(load_dataset("celeba64", "test", data_root=tmp_path)) == 1
    assert dataset_info("celeba32", "val", data_root=tmp_path)["num_images"] == 1


def test_celeba_attribute_gives_two_classes(tmp_path):
    write_celeba(tmp_path)
    train = load_dataset("celeba32", "train", data_root=tmp_path, config=DataConfig(celeba_attribute="Male"))
    assert train.class_names == ("not male", "male")
    assert list(train.labels) == [0, 1, 0, 1]


def test_celeba_unknown_attribute(tmp_path):
    write_celeba(tmp_path)
    with pytest.raises(DataError, match="unknown attribute 'Beard'"):
        load_dataset("celeba32", "train", data_root=tmp_path, config=DataConfig(celeba_attribute="Beard"))


def test_celeba_missing_image_is_named(tmp_path):
    write_celeba(tmp_path)
    os.remove(tmp_path / "celeba" / "img_align_celeba" / "000002.jpg")
    with pytest.raises(DataError, match="000002.jpg"):
        load_dataset("celeba32", "train", data_root=tmp_path)


# ----------------------------------------------------------------- the user's own ImageFolder


def test_own_image_folder(tmp_path):
    write_image_folder(tmp_path / "mine" / "train", classes=("apple", "pear"), mode="L")
    dataset = load_dataset("folder:mine", "train", data_root=tmp_path)
    assert dataset.images.shape == (6, 1, 8, 8) and dataset.class_names == ("apple", "pear")
    assert list(dataset.labels) == [0, 0, 0, 1, 1, 1]
    assert dataset.images[3].max() == 80


def test_own_folder_rgb_when_any_file_is_colour(tmp_path):
    write_image_folder(tmp_path / "mine" / "train", mode="L")
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "mine" / "train" / "cat" / "red.png")
    assert load_dataset("folder:mine", "train", data_root=tmp_path).image_shape == (3, 8, 8)


def test_own_folder_rejects_non_image_file(tmp_path):
    write_image_folder(tmp_path / "mine" / "train")
    (tmp_path / "mine" / "train" / "dog" / "notes.txt").write_text("hello")
    (tmp_path / "mine" / "train" / "dog" / ".DS_Store").write_bytes(b"\0")  # hidden: skipped
    with pytest.raises(DataError, match=r"notes\.txt is not an image file"):
        load_dataset("folder:mine", "train", data_root=tmp_path)


def test_own_folder_rejects_undecodable_image(tmp_path):
    write_image_folder(tmp_path / "mine" / "train")
    (tmp_path / "mine" / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=r"broken\.png"):
        load_dataset("folder:mine", "train", data_root=tmp_path)


def test_own_folder_rejects_mixed_sizes(tmp_path):
    write_image_folder(tmp_path / "mine" / "train")
    Image.new("RGB", (16, 8)).save(tmp_path / "mine" / "train" / "cat" / "wide.png")
    with pytest.raises(DataError, match=r"images differ in size .*16x8"):
        load_dataset("folder:mine", "train", data_root=tmp_path)


def test_own_folder_refuses_symlink_out_of_data_root(tmp_path):
    data_root, outside = tmp_path / "root", tmp_path / "outside"
    write_image_folder(data_root / "mine" / "train")
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "secret.png")
    os.symlink(outside / "secret.png", data_root / "mine" / "train" / "cat" / "link.png")
    with pytest.raises(DataError, match="outside the data root"):
        load_dataset("folder:mine", "train", data_root=data_root)


def test_own_folder_refuses_linked_folder_out_of_data_root(tmp_path):
    data_root, outside = tmp_path / "root", tmp_path / "outside"
    write_image_folder(data_root / "mine" / "train")
    write_image_folder(outside / "x", classes=("bird",))
    os.symlink(outside / "x" / "bird", data_root / "mine" / "train" / "bird")
    with pytest.raises(DataError, match="outside the data root"):
        load_dataset("folder:mine", "train", data_root=data_root)


def test_own_folder_refuses_path_escaping_data_root(tmp_path):
    write_image_folder(tmp_path / "elsewhere" / "train")
    (tmp_path / "root").mkdir()
    with pytest.raises(DataError, match="outside the data root"):
        load_dataset("folder:../elsewhere", "train", data_root=tmp_path / "root")


def test_own_folder_missing_split(tmp_path):
    write_image_folder(tmp_path / "mine" / "train")
    with pytest.raises(DataError, match="folder:mine has no split 'test' \\(splits: train\\)"):
        load_dataset("folder:mine", "test", data_root=tmp_path)


# ----------------------------------------------------------------- the user's own npz


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_own_npz_layouts(tmp_path, layout):
    images = RNG.integers(0, 256, (5, 3, 16, 16), dtype=np.uint8)
    stored = images.transpose(0, 2, 3, 1) if layout == "nhwc" else images
    (tmp_path / "mine").mkdir()
    np.savez(tmp_path / "mine" / "test.npz", x=stored, y=np.array([0, 1, 2, 1, 0]),
             class_names=np.array(["ant", "bee", "wasp"]))
    dataset = load_dataset("npz:mine", "test", data_root=tmp_path)
    np.testing.assert_array_equal(dataset.images, images)
    assert dataset.class_names == ("ant", "bee", "wasp")


def test_own_single_npz_file_is_the_train_split(tmp_path):
    np.savez(tmp_path / "one.npz", x=np.zeros((2, 8, 8, 1), np.uint8), y=np.array([0, 1]))
    dataset = load_dataset("npz:one.npz", "train", data_root=tmp_path)
    assert dataset.class_names == ("class_0", "class_1") and dataset.image_shape == (1, 8, 8)
    with pytest.raises(DataError, match="no split 'test'"):
        load_dataset("npz:one.npz", "test", data_root=tmp_path)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((2, 8, 8), np.uint8), "y": np.array([0, 1])}, "expected uint8 N x H x W x C"),
        ({"x": np.zeros((2, 8, 8, 1), np.float32), "y": np.array([0, 1])}, "'x' is float32"),
        ({"x": np.zeros((2, 8, 8, 5), np.uint8), "y": np.array([0, 1])}, "channel axis"),
        ({"x": np.zeros((2, 8, 8, 1), np.uint8), "y": np.array([0, 1, 1])}, "expected 2 integers"),
        ({"x": np.zeros((2, 8, 8, 1), np.uint8), "y": np.array([0.0, 1.0])}, "expected 2 integers"),
        ({"x": np.zeros((2, 8, 8, 1), np.uint8), "y": np.array([0, -1])}, "labels must lie in"),
        ({"images": np.zeros((2, 8, 8, 1), np.uint8)}, "lacks key"),
    ],
)
def test_own_npz_bad_arrays(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset("npz:bad.npz", "train", data_root=tmp_path)


def test_own_npz_corrupt_file(tmp_path):
    (tmp_path / "bad.npz").write_bytes(gzip.compress(b"nothing"))
    with pytest.raises(DataError, match="not a readable npz"):
        load_dataset("npz:bad.npz", "train", data_root=tmp_path)
