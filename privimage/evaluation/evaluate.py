"""Evaluate one synthetic dataset: FID and the three classifiers' accuracy (paper Table 2).

`evaluate_synthetic` is what ``privimage evaluate`` prints and what a method run
writes to ``metrics.json``. Every input check runs before any feature is
extracted or any classifier trained. `samples_fid` is the FID alone of a folder
of samples (the pre-trained-only generators of paper Fig. 6).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from privimage.config import Config
from privimage.data.base import ImageDataset
from privimage.evaluation.classifiers import classification_accuracy, split_for_validation
from privimage.evaluation.datasets import load_test_split
from privimage.evaluation.fid import FeatureExtractor, check_fid_sample_count, choose_backbone, frechet_distance, load_fid_backbone
from privimage.evaluation.synthetic import check_synthetic, load_run_synthetic


def evaluate_synthetic(
    *,
    synthetic: ImageDataset,
    config: Config,
    data_root: Path | None = None,
    test: ImageDataset | None = None,
    fid_backbone: FeatureExtractor | None = None,
    public_train: ImageDataset | None = None,
    public_validation: ImageDataset | None = None,
    device: torch.device | None = None,
    progress: bool = False,
) -> dict:
    """FID against the sensitive test split, and CA of LR/MLP/CNN trained on ``synthetic``.

    Args:
        synthetic: the generated set (uint8 images, labels in the sensitive classes).
        config: the resolved config (``data.sensitive``, ``data.public``, ``evaluation``, ``seed``).
        data_root: folder of real datasets.
        test: the sensitive test split to use instead of loading ``config.data.sensitive``.
        fid_backbone: a feature extractor to use instead of the one the config selects.
        public_train, public_validation: public splits for the offline backbone
            instead of loading ``config.data.public``.
        device: where networks run (default: CUDA when present).
        progress: show progress bars.

    Returns:
        ``{"fid", "fid_backbone", "fid_num_synthetic", "fid_num_real", "ca": {"lr", "mlp", "cnn"}, ...}``
        plus the feature size, the reference and test split labels, the
        classifiers' selection details and the wall time.
    """
    started = time.perf_counter()
    evaluation = config.evaluation
    # Check everything that can be checked before any work.
    if test is None:
        test = load_test_split(name=config.data.sensitive, data_root=data_root, config=config.data)
    check_synthetic(synthetic=synthetic, reference=test)
    if fid_backbone is not None:
        backbone_name, feature_dims = fid_backbone.name, fid_backbone.feature_dims
    else:
        public_name = public_train.name if public_train is not None else config.data.public
        choice = choose_backbone(config=evaluation, public_name=public_name)
        backbone_name, feature_dims = choice.name, choice.feature_dims
    for role, dataset in (("synthetic", synthetic), ("real", test)):
        check_fid_sample_count(num_images=len(dataset), feature_dims=feature_dims, backbone=backbone_name, role=role,
                               allow_singular_covariance=evaluation.fid_allow_singular_covariance)
    split_for_validation(dataset=synthetic, fraction=evaluation.synthetic_validation_fraction, seed=config.seed)

    # Fidelity: FID against the cached statistics of the test split.
    extractor = fid_backbone or load_fid_backbone(config=config, data_root=data_root, public_train=public_train,
                                                  public_validation=public_validation, device=device, progress=progress)
    fid = frechet_distance(synthetic=synthetic, real=test, extractor=extractor,
                           allow_singular_covariance=evaluation.fid_allow_singular_covariance, progress=progress)
    # Utility: classifiers trained on the synthetic set, tested once on the test split.
    ca = classification_accuracy(train=synthetic, test=test, config=evaluation, seed=config.seed, device=device,
                                 progress=progress)
    return {**fid, **ca, "sensitive": config.data.sensitive, "evaluation_wall_time_s": time.perf_counter() - started}


def samples_fid(*, folder: Path, config: Config, data_root: Path | None = None, progress: bool = False) -> dict:
    """FID of the synthetic set in a folder of samples against the sensitive test split (reporting only).

    Unlike `evaluate_synthetic`, no classifier is trained: what a generator draws
    before fine-tuning is compared on fidelity alone (paper Fig. 6).

    Args:
        folder: holds ``synthetic.npz`` and the ``config.json`` that names its classes.
        config: the resolved config (``data.sensitive``, ``evaluation``).
        data_root: folder of real datasets.
        progress: show progress bars while the backbone loads.

    Returns:
        `frechet_distance`'s record: ``fid``, ``fid_backbone``, ``fid_scale``, sample counts, ...
    """
    synthetic = load_run_synthetic(folder, data_root=data_root)
    test = load_test_split(name=config.data.sensitive, data_root=data_root, config=config.data)
    extractor = load_fid_backbone(config=config, data_root=data_root, progress=progress)
    return frechet_distance(synthetic=synthetic, real=test, extractor=extractor,
                            allow_singular_covariance=config.evaluation.fid_allow_singular_covariance)
