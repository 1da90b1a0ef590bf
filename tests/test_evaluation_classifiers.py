"""Downstream classifiers (paper Section 4.3): LR, MLP and CNN trained on one set, tested on the test split."""

import numpy as np
import pytest
import torch

from privimage.config import load_config
from privimage.data.base import ImageDataset
from privimage.data.mnist5k import load_mnist5k
from privimage.errors import ConfigError, DataError, PrivacyError
from privimage.evaluation.classifiers import classification_accuracy, split_for_validation, train_classifiers
from privimage.evaluation.networks import fit_cnn

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def mnist():
    return load_mnist5k("train"), load_mnist5k("test")


def flagged_sensitive(dataset):
    return ImageDataset(dataset.name, dataset.split, dataset.images, dataset.labels, dataset.class_names, sensitive=True)


def test_nonpriv_lr_and_mlp_on_real_mnist5k_reach_paper_level_accuracy(mnist):
    train, test = mnist
    result = classification_accuracy(train=flagged_sensitive(train), test=test, config=load_config("quick").evaluation,
                                     seed=0, kinds=("lr", "mlp"), non_private=True)
    assert result["ca"]["lr"] > 0.85
    assert result["ca"]["mlp"] > 0.90
    assert "NonPriv: outside the DP guarantee" in result["ca_training_data"]
    assert result["ca_test_split"] == "mnist5k/test (reporting only)"
    # Selection used the held-out tenth of the training set, never the 1,000 test images.
    assert (result["ca_num_train"], result["ca_num_validation"], result["ca_num_test"]) == (3600, 400, 1000)
    assert result["ca_selection"]["lr_C"] in load_config("quick").evaluation.lr_inverse_regularization


def test_nonpriv_cnn_on_real_mnist5k_reaches_95_percent(mnist):
    train, test = mnist
    result = classification_accuracy(train=train, test=test, config=load_config("quick").evaluation, seed=0,
                                     kinds=("cnn",), non_private=True)
    assert result["ca"]["cnn"] > 0.95
    assert 1 <= result["ca_selection"]["cnn_epochs"] <= 10


def test_random_labels_give_chance_accuracy(mnist):
    train, test = mnist
    rng = np.random.default_rng(0)
    subset = train.subset(rng.choice(len(train), 1500, replace=False))
    shuffled = ImageDataset("random-labels", "synthetic", subset.images, rng.integers(0, 10, len(subset)),
                            subset.class_names)
    config = load_config("quick", {"evaluation.cnn_epochs": 3, "evaluation.lr_inverse_regularization": [0.1]}).evaluation
    result = classification_accuracy(train=shuffled, test=test, config=config, seed=0)
    for kind in ("lr", "mlp", "cnn"):
        assert result["ca"][kind] < 0.2, result["ca"]
    assert result["ca_training_data"].startswith("synthetic")


def test_training_on_the_sensitive_split_needs_the_nonpriv_flag(mnist):
    train, _ = mnist
    with pytest.raises(PrivacyError, match="NonPriv"):
        train_classifiers(train=flagged_sensitive(train), config=load_config("smoke").evaluation, seed=0, kinds=("lr",))


def test_the_test_split_may_not_be_the_sensitive_training_set(mnist):
    train, test = mnist
    small = test.subset(np.arange(0, 1000, 10))
    with pytest.raises(PrivacyError, match="not a test split"):
        classification_accuracy(train=small, test=flagged_sensitive(train), config=load_config("smoke").evaluation,
                                seed=0, kinds=("lr",))


def test_cnn_training_is_deterministic_given_a_seed(mnist):
    train, _ = mnist
    fit, validation = train.subset(np.arange(400)), train.subset(np.arange(400, 500))
    runs = [fit_cnn(train=fit, validation=validation, num_classes=10, epochs=2, seed=3, width=8) for _ in range(2)]
    for a, b in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert runs[0].history == runs[1].history
    other = fit_cnn(train=fit, validation=validation, num_classes=10, epochs=2, seed=4, width=8)
    assert not torch.equal(other.model.head.weight, runs[0].model.head.weight)


def test_cnn_keeps_the_epoch_with_the_best_validation_accuracy(mnist):
    train, _ = mnist
    fit, validation = train.subset(np.arange(400)), train.subset(np.arange(400, 500))
    result = fit_cnn(train=fit, validation=validation, num_classes=10, epochs=4, seed=0, width=8)
    assert result.validation_accuracy == max(result.history)
    assert result.history[result.best_epoch - 1] == result.validation_accuracy


def test_validation_split_is_stratified_disjoint_and_seeded(mnist):
    train, _ = mnist
    fit, validation = split_for_validation(dataset=train, fraction=0.1, seed=0)
    assert (len(fit), len(validation)) == (3600, 400)
    assert np.all(np.bincount(validation.labels) == 40)
    # Disjoint: no training image is also a validation image.
    fit_rows = {row.tobytes() for row in fit.images.reshape(len(fit), -1)}
    assert not any(row.tobytes() in fit_rows for row in validation.images.reshape(len(validation), -1))
    again, _ = split_for_validation(dataset=train, fraction=0.1, seed=0)
    np.testing.assert_array_equal(again.labels, fit.labels)
    np.testing.assert_array_equal(again.images, fit.images)


def test_split_works_when_a_class_has_a_single_image():
    images = np.zeros((12, 1, 8, 8), np.uint8)
    labels = np.array([0] * 6 + [1] * 5 + [2])
    fit, validation = split_for_validation(
        dataset=ImageDataset("s", "synthetic", images, labels, ("a", "b", "c")), fraction=0.25, seed=0)
    assert len(fit) + len(validation) == 12 and len(validation) == 3


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_invalid_validation_fraction(fraction, mnist):
    with pytest.raises(ConfigError, match="synthetic_validation_fraction"):
        split_for_validation(dataset=mnist[1], fraction=fraction, seed=0)


def test_single_class_training_set_is_refused(mnist):
    _, test = mnist
    one_class = test.subset(np.flatnonzero(test.labels == 3))
    with pytest.raises(DataError, match="at least 2 classes"):
        train_classifiers(train=one_class, config=load_config("smoke").evaluation, seed=0)
