"""Pipeline stages the notebooks run on their own, beside whole runs: each cached, each with its ledger.

- `private_selection`, `selection_histogram`, `selection_rows`: the semantic
  query's release (paper Section 3.3), its noisy histogram, what it selected;
- `pretrained_only`, `matched_glyph_pretraining`: a generator sampled after
  pre-training, before any fine-tuning (paper Fig. 6 left), under
  ``cache_root()/pretrained_samples/<key>/``;
- `nonprivate_accuracy`: the NonPriv row of paper Table 3, under
  ``cache_root()/nonpriv_classifiers/<key>/``.

They reuse the stages of `privimage.pipeline`, so a notebook asking for the
selection or the pre-trained model of a run reads the one that run cached.
Privacy (DESIGN.md): the sensitive training split is read by the noisy query
only, and each release's ledger lies beside what derives from it; FID uses the
test split for reporting only. The NonPriv row reads the training split outside
any DP mechanism, as the paper's Table 3 does, and says so.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

# Stages through the module, so a stage replaced there (a test's tripwire) is the one that runs.
from privimage import pipeline
from privimage.cache import atomic_write_json, find_stage, stage_dir
from privimage.config import Config, config_hash, run_identity
from privimage.data import dataset_info, load_dataset, load_sensitive_train
from privimage.data.base import ImageDataset
from privimage.data.glyphs import DIGIT_NAMES
from privimage.data.mnist5k import CLASS_NAMES as DIGIT_CLASS_NAMES
from privimage.data.registry import resolve_data_root
from privimage.errors import PrivImageError
from privimage.evaluation import classification_accuracy
from privimage.evaluation.datasets import load_test_split
from privimage.evaluation.evaluate import samples_fid
from privimage.generators import generator_family
from privimage.methods import get_method
from privimage.privacy import PrivacyLedger
from privimage.semantics.selection import relabel_selected


def _sensitive_and_ledger(config: Config, data_root: Path):
    """The sensitive training set and an empty ledger for what the noisy query will read of it."""

    sensitive = load_sensitive_train(config, data_root=data_root)
    return sensitive, PrivacyLedger(delta=config.finetune.delta, dataset_hash=sensitive.content_hash(),
                                    num_examples=len(sensitive))


def private_selection(*, config: Config, data_root: Path | None = None, progress: bool = True):
    """The selected public subset and the query's summary for ``config`` (cached DP release).

    The release is the one every Privimage run of this seed and ratio reuses; its
    ledger (the query alone) is in ``summary["ledger"]``.

    Args:
        config: a run's config (its seed and selection ratio).
        data_root: folder of real datasets.
        progress: show progress bars.

    Returns:
        ``(selected ImageDataset, summary dict)``.
    """

    data_root = resolve_data_root(data_root)
    # The sensitive set is read by the noisy query only (accounted in the ledger).
    sensitive, ledger = _sensitive_and_ledger(config, data_root)
    return pipeline.selection_stage(method=get_method("privimage-d"), config=config, sensitive=sensitive,
                                    ledger=ledger, data_root=data_root, progress=progress)


def selection_histogram(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The released noisy histogram behind a selection summary (its ``noisy_histogram.npz``).

    The selection stage's folder is found by its ``selection.json``, which is the summary itself.

    Args:
        summary: what `private_selection` returned beside the subset.

    Returns:
        ``{"histogram", "row_names", "semantic_names", "folder"}``.
    """
    folder = find_stage("selection", record="selection.json", content=summary)
    if folder is None:
        raise PrivImageError("no cached selection stage matches this summary (run the selection first)")
    with np.load(folder / "noisy_histogram.npz") as archive:
        return {"histogram": archive["noisy_histogram"], "row_names": [str(n) for n in archive["row_names"]],
                "semantic_names": [str(n) for n in archive["semantic_names"]], "folder": folder}


def own_glyph_name(sensitive: str, public: str, class_name: str) -> str | None:
    """The public class that is this sensitive class's own glyph (MNIST-5k's "seven": Glyphs-1k's "DIGIT SEVEN")."""

    if sensitive != "mnist5k" or public != "glyphs1k" or class_name not in DIGIT_CLASS_NAMES:
        return None
    return DIGIT_NAMES[DIGIT_CLASS_NAMES.index(class_name)]


def ledger_epsilon(ledger: Mapping) -> float:
    """The epsilon of a serialised ledger (e.g. a selection's query alone)."""

    return PrivacyLedger.from_dict(dict(ledger)).epsilon()


def selection_rows(*, config: Config, data_root: Path | None = None, progress: bool = True) -> list[dict]:
    """What the query of ``config`` selected for each sensitive class (paper Fig. 10, Table 8).

    One row per sensitive class: the public classes selected, how many of them are
    the class's own glyph (on the embedded benchmark; None elsewhere), and the
    epsilon of the query alone. The release is the cached one the Privimage runs
    of this seed reuse.

    Args:
        config: a run's config (its seed and selection ratio).
        data_root: folder of real datasets.
        progress: show progress bars.

    Returns:
        Rows with ``seed, sensitive_class, selected, num_selected, own_glyph, num_own_glyph, k,
        semantics_per_class, query_noise_multiplier, query_epsilon``.
    """
    _, summary = private_selection(config=config, data_root=data_root, progress=progress)
    query_epsilon = ledger_epsilon(summary["ledger"]) if summary.get("ledger") else 0.0
    rows = []
    for sensitive_class, chosen in summary["selected"].items():
        own = own_glyph_name(summary["sensitive"], summary["public"], sensitive_class)
        rows.append({"seed": config.seed, "sensitive_class": sensitive_class, "selected": ", ".join(chosen),
                     "num_selected": len(chosen), "own_glyph": own,
                     "num_own_glyph": None if own is None else int(own in chosen),
                     "k": summary["k"], "semantics_per_class": summary["semantics_per_class"],
                     "query_noise_multiplier": summary["query_noise_multiplier"],
                     "query_epsilon": query_epsilon})
    return rows


def _pretrained_row(method: str, config: Config) -> dict:
    """A pre-trained-only row before its samples are measured."""
    return {"method": method, "seed": config.seed, "status": "ok", "note": "", "fid": math.nan,
            "fid_backbone": None, "fid_scale": None, "fid_num_synthetic": None, "fid_num_real": None,
            "samples_dir": None}


def _samples_folder(*, config: Config, data_key: str, generator: str) -> Path:
    """``cache_root()/pretrained_samples/<key>``: the run's config (grid section aside), its data and family."""
    return stage_dir("pretrained_samples",
                     config_hash({"run": run_identity(config), "data": data_key, "generator": generator}))


def _with_fid(row: dict, *, folder: Path, config: Config, data_root: Path, progress: bool) -> dict:
    """``row`` with the FID of the samples in ``folder`` against the sensitive test split (reporting only)."""

    fid = samples_fid(folder=folder, config=config, data_root=data_root, progress=progress)
    return {**row, "fid": float(fid["fid"]), "fid_backbone": fid["fid_backbone"], "fid_scale": fid["fid_scale"],
            "fid_unscaled": fid.get("fid_unscaled", math.nan),
            "fid_num_synthetic": fid["fid_num_synthetic"], "fid_num_real": fid["fid_num_real"],
            "samples_dir": str(folder)}


def pretrained_only(*, config: Config, method: str, data_root: Path | None = None, progress: bool = True) -> dict:
    """Samples and FID of a method's generator after pre-training, before any fine-tuning (Fig. 6 left).

    The pre-trained model comes from the same cached stage the method's runs use.
    PDP-Diffusion's model is pre-trained unconditionally on all public data, so it
    is sampled with the null class (a GAN has none and is sampled per class). Samples go to
    ``cache_root()/pretrained_samples/<key>/`` (``synthetic.npz``, ``samples.png``).

    Args:
        config: a run's config (its seed).
        method: a method that pre-trains (others give a skipped row).
        data_root: folder of real datasets.
        progress: show progress bars.

    Returns:
        ``{"method", "seed", "status", "note", "fid", "fid_backbone", "fid_scale", "fid_num_synthetic",
        "samples_dir", "query_epsilon", ...}``.
    """


    data_root = resolve_data_root(data_root)
    recipe = get_method(method)
    row = _pretrained_row(recipe.name, config)
    if recipe.pretrain_data == "none":
        return {**row, "status": "skipped", "note": f"{recipe.name} has no pre-training stage"}
    # The sensitive set is read by the noisy query only (selected pre-training data); the ledger records it.
    sensitive, ledger = _sensitive_and_ledger(config, data_root)
    public, data_key, _ = pipeline.pretraining_data(method=recipe, config=config, sensitive=sensitive, ledger=ledger,
                                                    data_root=data_root, progress=progress)
    channels, _, size = sensitive.image_shape
    folder = _samples_folder(config=config, data_key=data_key, generator=recipe.generator)
    # config.json is written last: a folder without it (a crash after sampling) is redone, not read.
    if not (folder / "config.json").is_file():
        networks, _ = pipeline.pretrain_stage(method=recipe, config=config, public=public, data_key=data_key,
                                              image_channels=channels, image_size=size,
                                              num_classes=sensitive.num_classes, progress=progress)
        networks = generator_family(recipe.generator).pretrained_for_sampling(
            networks, unconditional=data_key.startswith("all:"), num_classes=sensitive.num_classes)
        with torch.no_grad():
            pipeline.sample_stage(method=recipe, networks=networks, config=config, class_names=sensitive.class_names,
                                  image_shape=sensitive.image_shape, run_dir=folder, progress=progress)
        # The samples derive from the noisy query: the ledger and config go beside them.
        atomic_write_json(folder / "ledger.json", ledger.to_dict())
        atomic_write_json(folder / "config.json", config.to_dict())
    return {**_with_fid(row, folder=folder, config=config, data_root=data_root, progress=progress),
            "query_epsilon": ledger.epsilon()}


def matched_glyph_pretraining(*, config: Config, data_root: Path | None = None, progress: bool = True) -> dict:
    """Samples and FID of Privimage+D's model pre-trained on each digit's own glyph class: a reference for RQ2.

    On the embedded benchmark a perfect semantic query would select, for MNIST's
    class "seven", the glyph class "DIGIT SEVEN". This pre-trains the profile's
    UNet, with the same budget and sampler as the methods, on exactly those ten
    public classes, relabelled to the digits. The classes are matched by name,
    not chosen by a query of the sensitive data: no privacy cost and no ledger.
    It tells apart two reasons for weak results: the query's choice (compare
    with Privimage+D's pre-trained-only row) and the model's capacity.

    Args:
        config: a run's config (its seed).
        data_root: folder of real datasets.
        progress: show progress bars.

    Returns:
        A `pretrained_only` row with method ``"matched-glyphs"`` (status ``skipped``
        unless the public data is Glyphs-1k and the sensitive classes are the ten digits).
    """

    data_root = resolve_data_root(data_root)
    row = _pretrained_row("matched-glyphs", config)
    # Class names and image shape from the test split's metadata: the training split is never opened here.
    info = dataset_info(config.data.sensitive, "test", data_root=data_root, config=config.data)
    if config.data.public != "glyphs1k" or tuple(info["class_names"]) != DIGIT_CLASS_NAMES:
        return {**row, "status": "skipped", "note": "needs glyphs1k public data and the ten digit classes"}
    public = load_dataset(config.data.public, "train", data_root=data_root, config=config.data)
    matched = relabel_selected(public=public, selected=dict(zip(DIGIT_CLASS_NAMES, ([name] for name in DIGIT_NAMES))),
                               class_names=DIGIT_CLASS_NAMES)
    data_key = f"matched:{matched.content_hash()}"
    image_shape = tuple(info["image_shape"])
    recipe = get_method("privimage-d")
    folder = _samples_folder(config=config, data_key=data_key, generator=recipe.generator)
    # config.json is written last: a folder without it (a crash after sampling) is redone, not read.
    if not (folder / "config.json").is_file():
        networks, _ = pipeline.pretrain_stage(method=recipe, config=config, public=matched, data_key=data_key,
                                              image_channels=image_shape[0], image_size=image_shape[-1],
                                              num_classes=len(DIGIT_CLASS_NAMES), progress=progress)
        pipeline.sample_stage(method=recipe, networks=networks, config=config, class_names=DIGIT_CLASS_NAMES,
                              image_shape=image_shape, run_dir=folder, progress=progress)
        atomic_write_json(folder / "config.json", config.to_dict())
    return {**_with_fid(row, folder=folder, config=config, data_root=data_root, progress=progress),
            "query_epsilon": 0.0}


def nonprivate_accuracy(*, config: Config, data_root: Path | None = None, progress: bool = True) -> dict:
    """The NonPriv row of Table 3: LR/MLP/CNN trained on the real sensitive training split.

    This reads the sensitive training set outside any DP mechanism: it is the
    paper's non-private reference, has no privacy guarantee, and says so.
    Cached under ``cache_root()/nonpriv_classifiers/<key>/``.

    Args:
        config: a run's config (its seed).
        data_root: folder of real datasets.
        progress: show progress bars.

    Returns:
        ``{"ca_lr", "ca_mlp", "ca_cnn", "note"}``.
    """

    data_root = resolve_data_root(data_root)
    key = config_hash({"data": dataclasses.asdict(config.data), "evaluation": dataclasses.asdict(config.evaluation),
                       "seed": config.seed})
    path = stage_dir("nonpriv_classifiers", key) / "accuracy.json"
    if not path.is_file():
        train = load_sensitive_train(config, data_root=data_root)
        test = load_test_split(name=config.data.sensitive, data_root=data_root, config=config.data)
        result = classification_accuracy(train=train, test=test, config=config.evaluation, seed=config.seed,
                                         non_private=True, progress=progress)
        atomic_write_json(path, {"ca": result["ca"], "training_data": result["ca_training_data"]})
    result = json.loads(path.read_text())
    return {"ca_lr": result["ca"]["lr"], "ca_mlp": result["ca"]["mlp"], "ca_cnn": result["ca"]["cnn"],
            "note": "classifiers on the real training split: no privacy guarantee"}


def public_preview(*, config: Config, class_names: Sequence[str] | None = None, num_classes: int = 10,
                   data_root: Path | None = None) -> ImageDataset:
    """A few classes of the public training split, as an `ImageDataset` for a sample grid.

    Args:
        config: the resolved config.
        class_names: which public classes (default: ``num_classes`` drawn with ``config.seed``).
        num_classes: how many classes to draw when none are named.
        data_root: folder of real datasets (default: `privimage.data.registry.resolve_data_root`).

    Returns:
        The images of those classes, labelled 0..len-1 in the given order.
    """
    public = load_dataset(config.data.public, "train", data_root=resolve_data_root(data_root), config=config.data)
    if class_names is None:
        rng = np.random.default_rng(config.seed)
        drawn = sorted(rng.choice(public.num_classes, num_classes, replace=False))
        class_names = [public.class_names[i] for i in drawn]
    return relabel_selected(public=public, selected={name: [name] for name in class_names}, class_names=class_names)
