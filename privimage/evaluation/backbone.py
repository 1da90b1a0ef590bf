"""The offline FID backbone: a fixed feature network trained on public data only.

FID compares Inception features, and Inception was trained on ImageNet, a public
dataset. When pytorch-fid's Inception weights are not on the machine, this module
builds the analogue offline: a `SmallCNN` classifier trained once on the public
training split (Glyphs-1k by default), its epoch chosen on the public validation
split, and its 128-d penultimate layer used as the feature space. It must never
see the sensitive training set (`refuse_sensitive`).

The network is a measuring instrument, so its seed is fixed (not the experiment
seed): every run of every method is measured with the same backbone. It is cached
under ``cache_root()/fid_backbone/<hash>/`` (hash of the public data and of the
backbone settings) and loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json

import torch

from privimage.cache import atomic_torch_save, atomic_write_json, file_sha256, stage_dir
from privimage.config import EvaluationConfig, config_hash
from privimage.data.base import ImageDataset, refuse_sensitive
from privimage.errors import DataError
from privimage.evaluation.networks import SmallCNN, fit_cnn

# Fixed seed of the backbone's training: the same instrument for every experiment seed.
BACKBONE_SEED = 0
# Bump when the architecture or training loop changes, so stale caches are not reused.
BACKBONE_VERSION = 2
ARCH_NAME = "smallcnn"


def backbone_name(public_name: str) -> str:
    """The label every FID computed with this backbone carries, e.g. ``offline-smallcnn-glyphs1k``."""
    return f"offline-{ARCH_NAME}-{public_name}"


def load_or_train_backbone(
    *,
    public_train: ImageDataset,
    public_validation: ImageDataset,
    config: EvaluationConfig,
    device: torch.device | None = None,
    progress: bool = False,
) -> tuple[SmallCNN, dict]:
    """Return the cached offline backbone for this public data, training it on first use.

    Args:
        public_train: public images and labels to train on (never the sensitive set).
        public_validation: public images that choose the epoch.
        config: evaluation settings (``fid_backbone_width``, ``fid_backbone_embedding_dim``,
            ``fid_backbone_epochs``).
        device: where to train (default: CUDA when present).
        progress: show a progress bar while training.

    Returns:
        ``(model, meta)``: the network in eval mode on CPU, and its description
        (``name``, ``hash`` of the settings, ``weights_sha256``, public dataset, selected
        epoch, validation accuracy).
    """
    # The backbone is the analogue of ImageNet-trained Inception: public data only.
    refuse_sensitive(public_train, "the offline FID backbone")
    refuse_sensitive(public_validation, "the offline FID backbone")
    if public_train.class_names != public_validation.class_names:
        raise DataError(f"{public_train.name}: train and validation splits have different class names")

    settings = {
        "version": BACKBONE_VERSION,
        "arch": ARCH_NAME,
        "public_train": public_train.content_hash(),
        "public_validation": public_validation.content_hash(),
        "width": config.fid_backbone_width,
        "embedding_dim": config.fid_backbone_embedding_dim,
        "epochs": config.fid_backbone_epochs,
        "seed": BACKBONE_SEED,
    }
    key = config_hash(settings)
    folder = stage_dir("fid_backbone", key)
    weights_path, meta_path = folder / "backbone.pt", folder / "meta.json"

    # Reuse the cached instrument when one exists for exactly these settings.
    if weights_path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        meta.setdefault("weights_sha256", file_sha256(weights_path))
        model = SmallCNN(**meta["arch"])
        model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        return model.eval(), meta

    fit = fit_cnn(
        train=public_train,
        validation=public_validation,
        num_classes=public_train.num_classes,
        epochs=config.fid_backbone_epochs,
        seed=BACKBONE_SEED,
        width=config.fid_backbone_width,
        embedding_dim=config.fid_backbone_embedding_dim,
        device=device,
        progress=progress,
        desc="FID backbone",
    )
    meta = {
        "name": backbone_name(public_train.name),
        "hash": key,
        "arch": fit.model.arch,
        "input_shape": list(public_train.image_shape),
        "public_dataset": f"{public_train.name}/{public_train.split}",
        "public_validation_accuracy": fit.validation_accuracy,
        "best_epoch": fit.best_epoch,
        "settings": settings,
    }
    # Weights first, then the metadata that marks the stage complete.
    atomic_torch_save(weights_path, fit.model.state_dict())
    meta["weights_sha256"] = file_sha256(weights_path)
    atomic_write_json(meta_path, meta)
    return fit.model, meta
