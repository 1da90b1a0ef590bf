"""Classification accuracy (CA) of downstream classifiers (paper Section 4.3, Tables 2-4).

Three classifiers, as in the paper: logistic regression and an MLP
(scikit-learn) on flattened pixels in [0, 1], and a small CNN (torch,
`privimage.evaluation.networks.SmallCNN`) on images in [-1, 1]. They train on the
synthetic set and are tested once, at the end, on the sensitive dataset's test
split (reporting only).

Model selection never looks at the test split: a stratified part of the training
set (``evaluation.synthetic_validation_fraction``) is held out once and shared by
all three classifiers; it chooses the LR regularisation strength, the MLP's
early-stopping epoch and the CNN's best epoch.

The same functions train on the real sensitive training split for the paper's
NonPriv row (Table 3). That reads sensitive data outside any DP mechanism, so it
must be requested with ``non_private=True`` and the result is labelled so.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from privimage.config import EvaluationConfig
from privimage.data.base import ImageDataset
from privimage.errors import ConfigError, DataError, PrivacyError
from privimage.evaluation.networks import SmallCNN, accuracy, fit_cnn

CLASSIFIERS = ("lr", "mlp", "cnn")


def split_for_validation(*, dataset: ImageDataset, fraction: float, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """Hold out a part of a training set for model selection (stratified when every class allows it).

    Args:
        dataset: the training set (synthetic, or the real one for NonPriv).
        fraction: share held out, in (0, 1).
        seed: seed of the split (a selection seed, not DP noise).

    Returns:
        ``(fit, validation)``.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"evaluation.synthetic_validation_fraction must lie in (0, 1), got {fraction}")
    num_validation = max(1, int(round(fraction * len(dataset))))
    if len(dataset) - num_validation < 2:
        raise DataError(f"{dataset.name}: {len(dataset)} images are too few to hold out {fraction:.0%} for validation")
    indices = np.arange(len(dataset))
    counts = np.bincount(dataset.labels)
    present = counts[counts > 0]
    # Stratify when every class can give at least one image to each side.
    stratify = dataset.labels if present.min() >= 2 and num_validation >= len(present) else None
    fit_idx, validation_idx = train_test_split(indices, test_size=num_validation, random_state=seed, stratify=stratify)
    return dataset.subset(np.sort(fit_idx), split=f"{dataset.split}-fit"), dataset.subset(
        np.sort(validation_idx), split=f"{dataset.split}-validation"
    )


def _flat_pixels(dataset: ImageDataset) -> np.ndarray:
    return dataset.images.reshape(len(dataset), -1).astype(np.float32) / 255.0


@dataclass
class TrainedClassifiers:
    """The selected classifiers and how they were chosen."""

    models: dict
    selection: dict = field(default_factory=dict)
    training_data: str = ""
    num_fit: int = 0
    num_validation: int = 0

    @property
    def cnn(self) -> SmallCNN:
        return self.models["cnn"]


def fit_logistic_regression(*, fit: ImageDataset, validation: ImageDataset, config: EvaluationConfig,
                            seed: int) -> tuple[LogisticRegression, dict]:
    """LR on flattened pixels; the inverse regularisation C is chosen on ``validation``."""
    x_fit, x_validation = _flat_pixels(fit), _flat_pixels(validation)
    best, best_accuracy, best_c = None, -1.0, None
    for inverse_regularization in config.lr_inverse_regularization:
        model = LogisticRegression(C=inverse_regularization, max_iter=config.lr_max_iter, random_state=seed)
        # A capped solver is a budget we chose, not a failure worth a warning per fit.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x_fit, fit.labels)
        score = float(model.score(x_validation, validation.labels))
        if score > best_accuracy:
            best, best_accuracy, best_c = model, score, inverse_regularization
    return best, {"lr_C": best_c, "lr_validation_accuracy": best_accuracy}


def fit_mlp(*, fit: ImageDataset, validation: ImageDataset, num_classes: int, config: EvaluationConfig,
            seed: int) -> tuple[MLPClassifier, dict]:
    """MLP on flattened pixels, early-stopped on ``validation``.

    scikit-learn's own ``early_stopping`` draws a second split of its own; one
    epoch of ``partial_fit`` at a time lets the MLP stop on the split LR and CNN
    use, and keep the best epoch rather than the last.
    """
    x_fit, x_validation = _flat_pixels(fit), _flat_pixels(validation)
    model = MLPClassifier(hidden_layer_sizes=config.mlp_hidden_sizes, random_state=seed,
                          batch_size=min(200, len(fit)))
    classes = np.arange(num_classes)
    best, best_accuracy, best_epoch, waited = None, -1.0, 0, 0
    for epoch in range(config.mlp_max_iter):
        model.partial_fit(x_fit, fit.labels, classes=classes)
        score = float(model.score(x_validation, validation.labels))
        if score > best_accuracy:
            best, best_accuracy, best_epoch, waited = copy.deepcopy(model), score, epoch + 1, 0
        else:
            waited += 1
            if waited >= config.mlp_patience:
                break
    return best, {"mlp_epochs": best_epoch, "mlp_validation_accuracy": best_accuracy}


def train_classifiers(
    *,
    train: ImageDataset,
    config: EvaluationConfig,
    seed: int,
    num_classes: int | None = None,
    kinds: tuple[str, ...] = CLASSIFIERS,
    non_private: bool = False,
    device: torch.device | None = None,
    progress: bool = False,
) -> TrainedClassifiers:
    """Train the downstream classifiers on a (synthetic) training set, selecting on a held-out part of it.

    Args:
        train: the synthetic set; or the real sensitive training split with ``non_private=True``.
        config: evaluation settings.
        seed: seed of the validation split and of every classifier (not DP noise).
        num_classes: classes of the task (default: ``train.num_classes``).
        kinds: which of ``lr``, ``mlp``, ``cnn`` to train.
        non_private: allow the sensitive training split, for the NonPriv row only.
        device: where the CNN trains (default: CUDA when present).
        progress: show a progress bar while the CNN trains.

    Returns:
        `TrainedClassifiers` with the selected models.
    """
    unknown = [kind for kind in kinds if kind not in CLASSIFIERS]
    if unknown:
        raise ConfigError(f"unknown classifier(s) {unknown} (choose from {', '.join(CLASSIFIERS)})")
    # Reading the sensitive training split outside DP is the NonPriv baseline, and only that.
    if train.sensitive and not non_private:
        raise PrivacyError(
            f"classifiers must not train on the sensitive training set '{train.name}/{train.split}' "
            "except for the NonPriv row (non_private=True, outside the DP guarantee)"
        )
    num_classes = num_classes or train.num_classes
    if len(np.unique(train.labels)) < 2:
        raise DataError(f"{train.name}: classifiers need images of at least 2 classes, got labels {np.unique(train.labels).tolist()}")
    if non_private:
        training_data = f"real {train.name}/{train.split} (NonPriv: outside the DP guarantee)"
    else:
        training_data = f"synthetic {train.name}/{train.split}"

    fit, validation = split_for_validation(dataset=train, fraction=config.synthetic_validation_fraction, seed=seed)
    result = TrainedClassifiers(models={}, training_data=training_data, num_fit=len(fit), num_validation=len(validation))
    if "lr" in kinds:
        result.models["lr"], selection = fit_logistic_regression(fit=fit, validation=validation, config=config, seed=seed)
        result.selection.update(selection)
    if "mlp" in kinds:
        result.models["mlp"], selection = fit_mlp(fit=fit, validation=validation, num_classes=num_classes,
                                                  config=config, seed=seed)
        result.selection.update(selection)
    if "cnn" in kinds:
        cnn = fit_cnn(train=fit, validation=validation, num_classes=num_classes, epochs=config.cnn_epochs, seed=seed,
                      width=config.cnn_width, embedding_dim=config.cnn_embedding_dim, batch_size=config.cnn_batch_size,
                      lr=config.cnn_lr, device=device, progress=progress, desc="CNN classifier")
        result.models["cnn"] = cnn.model
        result.selection.update({"cnn_epochs": cnn.best_epoch, "cnn_validation_accuracy": cnn.validation_accuracy})
    return result


def score_on_test(*, classifiers: TrainedClassifiers, test: ImageDataset) -> dict[str, float]:
    """Test accuracy of each trained classifier, read once (reporting only).

    Args:
        classifiers: output of `train_classifiers`.
        test: the sensitive dataset's test split.

    Returns:
        ``{"lr": ..., "mlp": ..., "cnn": ...}`` (the kinds trained), fractions in [0, 1].
    """
    if test.sensitive:
        raise PrivacyError(f"'{test.name}/{test.split}' is the sensitive training set, not a test split")
    scores = {}
    for kind, model in classifiers.models.items():
        if kind == "cnn":
            scores[kind] = accuracy(model, test)
        else:
            scores[kind] = float(model.score(_flat_pixels(test), test.labels))
    return scores


def classification_accuracy(
    *,
    train: ImageDataset,
    test: ImageDataset,
    config: EvaluationConfig,
    seed: int,
    kinds: tuple[str, ...] = CLASSIFIERS,
    non_private: bool = False,
    device: torch.device | None = None,
    progress: bool = False,
) -> dict:
    """Train LR, MLP and CNN on ``train`` and report their accuracy on ``test`` (paper Table 2).

    Args:
        train: the synthetic set (or the real training split with ``non_private=True``).
        test: the sensitive dataset's test split (reporting only).
        config: evaluation settings.
        seed: seed of the validation split and the classifiers.
        kinds: which classifiers to train.
        non_private: the NonPriv row: train on real sensitive data, outside DP.
        device: where the CNN trains.
        progress: show progress bars.

    Returns:
        ``{"ca": {"lr", "mlp", "cnn"}, "ca_training_data", "ca_test_split",
        "ca_num_train", "ca_num_validation", "ca_num_test", "ca_selection"}``.
    """
    # Refuse a wrong test set before spending time on training.
    if test.sensitive:
        raise PrivacyError(f"'{test.name}/{test.split}' is the sensitive training set, not a test split")
    if train.image_shape != test.image_shape:
        raise DataError(f"training images are {train.image_shape} but test images are {test.image_shape}")
    trained = train_classifiers(train=train, config=config, seed=seed, num_classes=test.num_classes, kinds=kinds,
                                non_private=non_private, device=device, progress=progress)
    return {
        "ca": score_on_test(classifiers=trained, test=test),
        "ca_training_data": trained.training_data,
        "ca_test_split": f"{test.name}/{test.split} (reporting only)",
        "ca_num_train": trained.num_fit,
        "ca_num_validation": trained.num_validation,
        "ca_num_test": len(test),
        "ca_selection": trained.selection,
    }
