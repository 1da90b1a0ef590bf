"""Synthetic .npz files and evaluate_synthetic: every bad input is one clear line, before any work."""

import numpy as np
import pytest
import torch

from privimage.config import load_config
from privimage.data.base import ImageDataset
from privimage.data.mnist5k import load_mnist5k
from privimage.errors import DataError, PrivacyError
from privimage.evaluation import evaluate as evaluate_module
from privimage.evaluation.evaluate import evaluate_synthetic
from privimage.evaluation.synthetic import load_synthetic_npz
from stand_ins import stand_in_public

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def test_split():
    return load_mnist5k("test")


pytestmark = pytest.mark.usefixtures("isolated_cache")


def write(tmp_path, name="synthetic.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def good_arrays(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.integers(0, 256, (n, 1, 32, 32), dtype=np.uint8), "y": rng.integers(0, 10, n)}


def test_a_good_file_loads_with_the_sensitive_class_names(tmp_path, test_split):
    synthetic = load_synthetic_npz(path=write(tmp_path, **good_arrays()), reference=test_split)
    assert synthetic.image_shape == (1, 32, 32) and len(synthetic) == 200
    assert synthetic.class_names == test_split.class_names and not synthetic.sensitive


def test_nhwc_is_transposed_to_nchw(tmp_path, test_split):
    arrays = good_arrays()
    nhwc = arrays["x"].transpose(0, 2, 3, 1)
    synthetic = load_synthetic_npz(path=write(tmp_path, x=nhwc, y=arrays["y"]), reference=test_split)
    np.testing.assert_array_equal(synthetic.images, arrays["x"])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: {"x": np.zeros((200, 3, 32, 32), np.uint8), "y": a["y"]}, r"3x32x32 but mnist5k images are 1x32x32"),
        (lambda a: {"x": np.zeros((200, 1, 28, 28), np.uint8), "y": a["y"]}, r"1x28x28 but mnist5k"),
        (lambda a: {"x": a["x"], "y": a["y"] + 5}, r"labels must lie in \[0, 10\).*got range"),
        (lambda a: {"x": a["x"], "y": a["y"] - 20}, r"labels must lie in \[0, 10\)"),
        (lambda a: {"x": a["x"].astype(np.float32) * np.nan, "y": a["y"]}, r"contain NaN"),
        (lambda a: {"x": a["x"].astype(np.float32), "y": a["y"]}, r"must be uint8 .*got float32"),
        (lambda a: {"x": a["x"].astype(np.int64), "y": a["y"]}, r"must be uint8 .*got int64"),
        (lambda a: {"x": a["x"], "y": a["y"].astype(np.float64)}, r"labels y must be integers"),
        (lambda a: {"x": a["x"], "y": a["y"][:-1]}, r"200 images but labels y of shape \(199,\)"),
        (lambda a: {"x": a["x"][:, 0], "y": a["y"]}, r"must be 4-D"),
        (lambda a: {"x": np.zeros((200, 5, 32, 32), np.uint8), "y": a["y"]}, r"1 or 3 channels"),
        (lambda a: {"images": a["x"], "y": a["y"]}, r"missing array\(s\) x \(found: images, y\)"),
        (lambda a: {"x": a["x"]}, r"missing array\(s\) y"),
        (lambda a: {"x": a["x"], "y": np.full(200, 4)}, r"at least 2 classes"),
    ],
)
def test_bad_files_are_refused_with_one_line(tmp_path, test_split, mutate, message):
    path = write(tmp_path, **mutate(good_arrays()))
    with pytest.raises(DataError, match=message) as info:
        load_synthetic_npz(path=path, reference=test_split)
    assert "\n" not in str(info.value)


def test_corrupt_truncated_and_non_npz_files(tmp_path, test_split):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError, match="not a readable npz archive"):
        load_synthetic_npz(path=garbage, reference=test_split)
    good = write(tmp_path, **good_arrays())
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(DataError, match="not a readable npz archive"):
        load_synthetic_npz(path=truncated, reference=test_split)
    single = tmp_path / "single.npy"
    np.save(single, good_arrays()["x"])
    with pytest.raises(DataError, match="not an npz archive"):
        load_synthetic_npz(path=single, reference=test_split)
    objects = write(tmp_path, "objects.npz", x=np.array([object()] * 3), y=np.zeros(3, int))
    with pytest.raises(DataError, match="not a readable npz archive"):
        load_synthetic_npz(path=objects, reference=test_split)
    with pytest.raises(DataError, match="not found"):
        load_synthetic_npz(path=tmp_path / "missing.npz", reference=test_split)



def test_too_few_samples_for_fid_is_refused_before_any_work(test_split, monkeypatch):
    for name in ("load_fid_backbone", "frechet_distance", "classification_accuracy"):
        monkeypatch.setattr(evaluate_module, name, lambda **_: pytest.fail("work started before the checks"))
    small = test_split.subset(np.arange(0, 1000, 10), split="synthetic")
    with pytest.raises(DataError, match="needs at least 129 synthetic images"):
        evaluate_synthetic(synthetic=small, config=load_config("smoke"), test=test_split)
    # 2048-d Inception features need more than the 1,000 real test images (the file is only checked to exist).
    arrays = good_arrays(n=2100)
    large = ImageDataset("large", "synthetic", arrays["x"], arrays["y"], test_split.class_names)
    with pytest.raises(DataError, match="needs at least 2049 real images .*got 1000"):
        evaluate_synthetic(synthetic=large, config=load_config("smoke", {"evaluation.fid_backbone": "auto",
                                                                         "evaluation.inception_weights": __file__}),
                           test=test_split)
    flagged = ImageDataset("mnist5k", "train", small.images, small.labels, small.class_names, sensitive=True)
    with pytest.raises(PrivacyError, match="not a synthetic set"):
        evaluate_synthetic(synthetic=flagged, config=load_config("smoke"), test=test_split)


def test_evaluate_synthetic_reports_fid_and_ca_with_their_provenance(test_split):
    train = load_mnist5k("train")
    rows = np.random.default_rng(0).choice(len(train), 300, replace=False)
    synthetic = ImageDataset("real-digits", "synthetic", train.images[rows], train.labels[rows], train.class_names)
    public_train, public_validation = stand_in_public()
    result = evaluate_synthetic(synthetic=synthetic, config=load_config("smoke"), test=test_split,
                                public_train=public_train, public_validation=public_validation)
    assert result["fid_backbone"] == "offline-smallcnn-sklearn-digits"
    assert (result["fid_num_synthetic"], result["fid_num_real"]) == (300, 1000)
    assert result["fid"] > 0 and np.isfinite(result["fid"])
    assert set(result["ca"]) == {"lr", "mlp", "cnn"}
    assert all(0.0 <= value <= 1.0 for value in result["ca"].values())
    # Real digits as "synthetic" data: far better than chance even with smoke budgets.
    assert result["ca"]["lr"] > 0.5
    assert result["ca_test_split"] == result["fid_reference"] == "mnist5k/test (reporting only)"
