"""One method run, end to end: selection -> pre-training -> fine-tuning -> sampling -> evaluation.

``run_method`` is what ``privimage run`` and the notebooks call. Data flows one
way through cached stages (STYLE.md rule 4):

- ``cache/selection/<key>/``: the semantic query's release and what it selected
  (key: sensitive data, SQF settings, k, z, ratio, seed). A DP release, reused
  by every method and epsilon of one seed; each run's ledger carries its entry;
- ``cache/pretrain/<key>/``: the pre-trained generator (key: generator family,
  model and pre-training settings, pre-training data, seed), shared by methods
  that pre-train on the same data;
- the run folder: everything touched by fine-tuning on the sensitive data.

A run folder holds ``config.json`` (resolved config), ``run.json`` (method,
epsilon, seed, delta and the absolute data root the sensitive set was read from), ``ledger.json`` (every mechanism that read the sensitive data;
absent for the non-private ablations, which have no guarantee and say so in
``privacy.json``), ``synthetic.npz`` (uint8 images ``x`` and labels ``y``),
``samples.png`` (a grid per class), ``metrics.json`` (FID and CA, reporting
only) and ``resources.json`` (time and peak memory per stage). Re-running the
same command resumes: finished stages are read back, fine-tuning continues from
its last checkpoint with its privacy journal.

What differs between a diffusion model and a GAN (building, pre-training,
fine-tuning, sampling) is asked of its `privimage.generators` family.

Under ``torchrun`` (`privimage.distributed`) every rank runs ``run_method``:
all ranks train the SQF, pre-train and fine-tune together; rank 0 alone decides
what is cached, makes the semantic query (one noisy histogram, handed to the
others), writes every file, samples and evaluates. The other ranks return once
fine-tuning is done, with the run's privacy record and no metrics.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from privimage import distributed
from privimage.cache import atomic_save_npz, atomic_torch_save, atomic_write_json, cache_root, stage_dir
from privimage.config import Config, config_from_dict, config_hash, run_identity
from privimage.data import dataset_info, load_dataset, load_sensitive_train
from privimage.data.base import ImageDataset
from privimage.data.registry import default_data_root
from privimage.errors import ConfigError, PrivImageError
from privimage.evaluation import evaluate_synthetic, save_class_grid
from privimage.generators import generator_family
from privimage.methods import Method, get_method
from privimage.privacy import PrivacyLedger
from privimage.privacy.noise import noise_generator_name
from privimage.resource_usage import measure_stage
from privimage.run_folder import check_release_location, read_json_mapping

# load_public and query_function_key through their modules, so that what a test replaces there (a
# tripwire, a retrained query function's key) is what is called.
from privimage.semantics import query_function as query_function_module
from privimage.semantics import stage as semantics_stage
from privimage.semantics.selection import relabel_selected
from privimage.semantics.stage import (
    check_compatible,
    check_image_shapes,
    resolve_query_settings,
    run_selection,
    trained_query_function,
)
from privimage.training.dpsgd import calibrate_to_ledger
from privimage.training.journal import JOURNAL_NAME
from privimage.training.plan import finetune_plan


@dataclass
class RunResult:
    """Where a run's outputs are and its headline numbers."""

    run_dir: Path
    method: str
    epsilon: float | None
    metrics: dict[str, Any]
    privacy: dict[str, Any]


# --------------------------------------------------------------------------- helpers


def default_run_dir(*, method: Method, config: Config, epsilon: float | None) -> Path:
    """``<cache root>/runs/<profile>/<method>-<sensitive>-eps<E>-seed<S>-<config hash>``."""
    tag = "nonprivate" if epsilon is None else f"eps{epsilon:g}"
    name = f"{method.name}-{config.data.sensitive}-{tag}-seed{config.seed}-{config_hash(run_identity(config))[:8]}"
    return cache_root() / "runs" / config.profile / name


def resolved_data_root(data_root: Path | None) -> Path:
    """The absolute data root a run reads (``data_root``, else ``$PRIVIMAGE_DATA``, else ``./data``)."""

    return Path(data_root if data_root is not None else default_data_root()).resolve()


def _image_geometry(dataset_or_info) -> tuple[int, int]:
    shape = dataset_or_info.image_shape if isinstance(dataset_or_info, ImageDataset) else dataset_or_info["image_shape"]
    return int(shape[0]), int(shape[-1])


def check_epsilon(method: Method, epsilon: float | None) -> float | None:
    """A private method needs a positive finite epsilon; a non-private one takes none."""
    if not method.private:
        return None
    if epsilon is None:
        raise PrivImageError(f"method '{method.name}' is differentially private and needs --epsilon")
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise PrivImageError(f"epsilon must be a positive finite number, got {epsilon}")
    return float(epsilon)


# --------------------------------------------------------------------------- stages


def selection_stage(
    *, method: Method, config: Config, sensitive: ImageDataset, ledger, data_root: Path | None, progress: bool
) -> tuple[ImageDataset, dict[str, Any]]:
    """The selected public subset, from the cache or a fresh (noisy) query.

    The ledger gets the query's entry either way: reusing a cached release is
    post-processing of it, and this run depends on it.
    """

    semantics = config.semantics
    # The SQF's own key (public images, training settings, code version), so that a
    # retrained SQF never reuses a selection an earlier one made.
    public_train, public_val = semantics_stage.load_public(config, data_root=data_root)
    key = config_hash({
        "private": method.private, "sensitive": sensitive.content_hash(), "public": config.data.public,
        "data": dataclasses.asdict(config.data), "semantics": dataclasses.asdict(semantics),
        "delta": config.finetune.delta, "secure_mode": config.finetune.secure_mode, "seed": config.seed,
        "sqf": query_function_module.query_function_key(public_train=public_train, public_val=public_val,
                                                        config=semantics, seed=semantics.sqf_seed),
    })
    directory = stage_dir("selection", key)
    summary_path = directory / "selection.json"
    if not distributed.main_only(summary_path.is_file):
        query_ledger = (
            PrivacyLedger(delta=ledger.delta, dataset_hash=ledger.dataset_hash, num_examples=ledger.num_examples)
            if method.private else None
        )
        if distributed.is_distributed():
            # SQF training reads public data only: every rank takes part; rank 0 caches it.
            trained_query_function(config, data_root=data_root, progress=progress)

        def query_and_select() -> None:
            run_selection(config, ledger=query_ledger, out_dir=directory, data_root=data_root, sensitive=sensitive,
                          private=method.private, progress=progress)

        # The noisy histogram is drawn once, by rank 0; the others receive the release.
        distributed.main_only(query_and_select)
    summary = distributed.main_only(lambda: json.loads(summary_path.read_text()))
    if method.private:
        cached = PrivacyLedger.from_dict(summary["ledger"])
        ledger.merge(cached)
    # Rows in the sensitive label order (the JSON holds them sorted by name), or the one unlabelled row.
    rows = sensitive.class_names if len(summary["selected"]) > 1 else tuple(summary["selected"])
    selected = relabel_selected(public=public_train, selected=summary["selected"], class_names=rows)
    return selected, summary


def pretraining_data(
    *, method: Method, config: Config, sensitive: ImageDataset, ledger, data_root: Path | None, progress: bool
) -> tuple[ImageDataset | None, str, dict[str, Any] | None]:
    """The method's pre-training data, a name for it (for the cache key) and the selection summary."""
    if method.pretrain_data == "none":
        return None, "none", None
    if method.pretrain_data == "all":
        # From the metadata first: a mismatch is refused before the public images load.
        public_info = dataset_info(config.data.public, "train", data_root=data_root, config=config.data)
        check_image_shapes(public_name=config.data.public, public_shape=tuple(public_info["image_shape"]),
                           sensitive=sensitive)
        public = load_dataset(config.data.public, "train", data_root=data_root, config=config.data)
        check_compatible(public, sensitive)
        return public, f"all:{public.content_hash()}", None
    selected, summary = selection_stage(
        method=method, config=config, sensitive=sensitive, ledger=ledger, data_root=data_root, progress=progress
    )
    return selected, f"selected:{selected.content_hash()}", summary


def pretrain_stage(
    *, method: Method, config: Config, public: ImageDataset | None, data_key: str, image_channels: int,
    image_size: int, num_classes: int, progress: bool,
) -> tuple[dict[str, torch.nn.Module], dict[str, Any]]:
    """The pre-trained generator (cached): ``{"model": unet}`` or ``{"generator", "discriminator"}``.

    A method that pre-trains on nothing gets freshly initialised networks.
    """
    family = generator_family(method.generator)
    torch.manual_seed(config.seed)
    networks = family.build(config, image_channels=image_channels, image_size=image_size, num_classes=num_classes)
    if public is None:
        return networks, {"stage": "pretraining", "skipped": True}
    public_is_all = data_key.startswith("all:")
    key = config_hash({
        "generator": family.name, "model": family.settings(config),
        "pretrain": dataclasses.asdict(config.pretrain), "data": data_key, "seed": config.seed,
        "num_classes": num_classes, "unconditional": public_is_all, "file_format": 3,  # 3: EMA with warm-up
    })
    directory = stage_dir("pretrain", key)
    final_path = directory / "pretrained.pt"
    # Rank 0 reads the cache and hands the weights to every rank.
    state = distributed.main_only(
        lambda: torch.load(final_path, map_location="cpu", weights_only=True) if final_path.is_file() else None
    )
    if state is not None:
        for name, network in networks.items():
            network.load_state_dict(state[name])
        return networks, state["stats"]
    # All public data has public labels, not the sensitive classes: the family trains it unconditionally.
    stats = family.pretrain(networks, public=public, config=config, run_dir=directory, unconditional=public_is_all,
                            num_classes=num_classes, progress=progress)
    final = {**{name: _cpu_state(net) for name, net in networks.items()}, "stats": _plain(stats)}
    distributed.main_only(lambda: atomic_torch_save(final_path, final))
    return networks, stats


def _cpu_state(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A state dict on the CPU, so a file written on a GPU loads anywhere."""
    return {key: value.detach().cpu() for key, value in network.state_dict().items()}


def _plain(value: Any) -> Any:
    """JSON-able primitives only (what ``torch.load(weights_only=True)`` accepts back)."""
    return json.loads(json.dumps(value, default=str))


def sample_stage(
    *, method: Method, networks: dict[str, torch.nn.Module], config: Config, class_names: tuple[str, ...],
    image_shape: tuple[int, int, int], run_dir: Path, progress: bool,
) -> ImageDataset:
    """A class-balanced synthetic set (``synthetic.npz``) and a grid per class (``samples.png``)."""


    path = run_dir / "synthetic.npz"
    num_classes = len(class_names)
    if path.is_file():
        with np.load(path) as archive:
            return ImageDataset("synthetic", "all", archive["x"], archive["y"], class_names)
    family = generator_family(method.generator)
    sampling = config.sampling
    per_class = max(1, sampling.num_samples // num_classes)
    labels = np.repeat(np.arange(num_classes), per_class)
    # Sampling only post-processes the trained model: a seeded generator is fine here.
    device = next(next(iter(networks.values())).parameters()).device
    generator = torch.Generator(device=device).manual_seed(config.seed)
    chunks = []
    for start in tqdm(range(0, len(labels), sampling.batch_size), desc="sampling", disable=not progress, leave=False):
        batch_labels = torch.from_numpy(labels[start : start + sampling.batch_size]).to(device)
        images = family.sample(networks, labels=batch_labels, image_shape=image_shape, num_classes=num_classes,
                               config=config, generator=generator)
        chunks.append(((images + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy())
    synthetic = ImageDataset("synthetic", "all", np.concatenate(chunks), labels.astype(np.int64), class_names)
    save_class_grid(dataset=synthetic, path=run_dir / "samples.png", samples_per_class=10, seed=config.seed)
    atomic_save_npz(path, x=synthetic.images, y=synthetic.labels)
    return synthetic


# --------------------------------------------------------------------------- the run


def run_method(
    *,
    method: str,
    config: Config,
    epsilon: float | None,
    out_dir: Path | None = None,
    data_root: Path | None = None,
    evaluate: bool = True,
    progress: bool = True,
) -> RunResult:
    """Run (or resume) one method: paper Algorithm 2, step by step.

    The steps as the paper walks through them (end of Section 3.4): 1 train the semantic query function,
    2 query the sensitive semantic distribution, 3 add Gaussian noise, 4 select public data and pre-train
    on it, 5 fine-tune with DP-SGD, 6 generate the synthetic dataset.

    Args:
        method: a name from `privimage.methods.METHODS`.
        config: the resolved config (``seed`` included).
        epsilon: the run's total privacy budget (query + DP-SGD) at ``config.finetune.delta``;
            None for the non-private ablations.
        out_dir: the run folder (default: `default_run_dir`).
        data_root: folder of real datasets.
        evaluate: compute ``metrics.json`` (FID, CA) after sampling.
        progress: show progress bars.

    Returns:
        The `RunResult`.
    """

    # Under torchrun, join the launcher's process group (nothing to do for one process).
    distributed.setup()
    recipe = get_method(method)
    epsilon = check_epsilon(recipe, epsilon)
    run_dir = Path(out_dir) if out_dir is not None else default_run_dir(method=recipe, config=config, epsilon=epsilon)
    # Algorithm 2's inputs: the sensitive set (read only by the query and DP-SGD) and the budget, checked first.
    sensitive, ledger = _open_run(recipe=recipe, config=config, epsilon=epsilon, run_dir=run_dir,
                                  data_root=data_root, evaluate=evaluate)
    progress = progress and distributed.is_main_process()
    resources: list[dict] = []
    # Steps 1-3 and the selection of step 4 (Sections 3.2-3.3): the SQF trained on public data (Eq. 4), the
    # noisy semantic distribution (Theorem 3.1), the public data it selects. Methods without a query
    # pre-train on all public data or on none (Section 4.2).
    with measure_stage("selection", log=resources):
        public, data_key, selection = pretraining_data(
            method=recipe, config=config, sensitive=sensitive, ledger=ledger, data_root=data_root, progress=progress
        )
    distributed.main_only(lambda: _check_same_pretraining_data(run_dir, data_key))
    # Step 4 (Section 3.4): pre-train the generative model on the selected public data.
    image_channels, image_size = _image_geometry(sensitive)
    with measure_stage("pretraining", log=resources):
        networks, pretrain_stats = pretrain_stage(
            method=recipe, config=config, public=public, data_key=data_key, image_channels=image_channels,
            image_size=image_size, num_classes=sensitive.num_classes, progress=progress,
        )
    # Step 5 (Section 3.4, Algorithm 1): fine-tune on the sensitive data with DP-SGD.
    with measure_stage("finetuning", log=resources):
        finetune_stats = finetune_stage(recipe=recipe, networks=networks, sensitive=sensitive, ledger=ledger,
                                        config=config, run_dir=run_dir / "finetune", epsilon=epsilon,
                                        progress=progress)
    # The privacy record (Appendix E) is complete now: written by rank 0 before any derived artifact.
    privacy = distributed.main_only(lambda: _write_privacy_record(run_dir=run_dir, recipe=recipe, ledger=ledger,
                                                                  epsilon=epsilon, config=config))
    if not distributed.is_main_process():
        # Sampling and evaluation only post-process the model: rank 0 does them alone.
        return RunResult(run_dir=run_dir, method=recipe.name, epsilon=epsilon, metrics={}, privacy=privacy)
    # Step 6: the fine-tuned model generates the synthetic dataset.
    with measure_stage("sampling", log=resources):
        synthetic = sample_stage(method=recipe, networks=networks, config=config, class_names=sensitive.class_names,
                                 image_shape=sensitive.image_shape, run_dir=run_dir, progress=progress)
    # Section 4.3: FID and CA against the sensitive test split, for reporting only.
    metrics = evaluate_stage(synthetic=synthetic, config=config, run_dir=run_dir, data_root=data_root,
                             progress=progress) if evaluate else {}
    atomic_write_json(run_dir / "resources.json", {
        "stages": resources, "pretraining": _plain(pretrain_stats), "finetuning": _plain(finetune_stats),
        "selection": _plain({k: v for k, v in (selection or {}).items() if k in ("sqf", "query_seconds")}),
    })
    return RunResult(run_dir=run_dir, method=recipe.name, epsilon=epsilon, metrics=metrics, privacy=privacy)


def _open_run(*, recipe: Method, config: Config, epsilon: float | None, run_dir: Path, data_root: Path | None,
              evaluate: bool) -> tuple[ImageDataset, Any]:
    """Check where the run writes, load the sensitive set, check the budget, then open the run folder.

    Returns:
        ``(sensitive, ledger)``: the sensitive training set and the run's empty privacy ledger
        (None for a non-private method).
    """

    # Where the run will write is checked before any work and before the sensitive data is read.
    distributed.main_only(lambda: check_release_location(out_dir=run_dir, command="run"))
    # Loaded and checked (delta < 1/N, ...) before the run folder is created.
    with distributed.main_process_first():
        sensitive = load_sensitive_train(config, data_root=data_root)
        if distributed.is_distributed() and recipe.pretrain_data != "none":
            # Rank 0 renders or unpacks the public data into the cache; the others then read it.
            semantics_stage.load_public(config, data_root=data_root)
    # Each rank loads its own copy; the shards only add up to the dataset if the copies agree.
    distributed.check_same_everywhere(sensitive.content_hash(), what="the sensitive dataset's content hash")
    ledger = None
    if recipe.private:
        ledger = PrivacyLedger(delta=config.finetune.delta, dataset_hash=sensitive.content_hash(),
                               num_examples=len(sensitive), config_hash=config_hash(run_identity(config)))
    if evaluate and sensitive.num_classes < 2:
        raise PrivImageError(
            f"'{sensitive.name}' has {sensitive.num_classes} class: classification accuracy needs at least 2; "
            "run with --no-evaluate (evaluate=False)"
        )
    # The schedule and the budget are checked before any work: a budget no sigma meets, or a batch the
    # data cannot fill, is refused before the query and pre-training spend anything, not after them.
    if recipe.private:
        planned_calibration(recipe=recipe, config=config, num_examples=len(sensitive), epsilon=epsilon,
                            data_root=data_root)

    def open_run_dir() -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        _check_same_run(run_dir, method=recipe.name, epsilon=epsilon, config=config)
        _check_spending_is_traceable(run_dir)
        atomic_write_json(run_dir / "config.json", config.to_dict())
        # The data root, absolute: `privimage audit` finds and re-hashes the same files without being told again.
        atomic_write_json(run_dir / "run.json", {"method": recipe.name, "epsilon": epsilon, "seed": config.seed,
                                                 "delta": config.finetune.delta if recipe.private else None,
                                                 "data_root": str(resolved_data_root(data_root))})

    # Rank 0 owns the run folder; the others write nothing.
    distributed.main_only(open_run_dir)
    return sensitive, ledger


def finetune_stage(
    *, recipe: Method, networks: dict[str, torch.nn.Module], sensitive: ImageDataset, ledger, config: Config,
    run_dir: Path, epsilon: float | None, progress: bool,
) -> dict[str, Any]:
    """DP-SGD to the run's budget (or plain SGD for the ablation); leaves the networks to sample from.

    For diffusion the sampling network becomes the fine-tuning EMA.
    """
    family = generator_family(recipe.generator)
    if recipe.private:
        return family.dp_finetune(networks, sensitive=sensitive, ledger=ledger, config=config, run_dir=run_dir,
                                  target_epsilon=epsilon, progress=progress)
    return family.finetune_nonprivate(networks, sensitive=sensitive, config=config, run_dir=run_dir,
                                      progress=progress)


def _write_privacy_record(*, run_dir: Path, recipe: Method, ledger, epsilon: float | None,
                          config: Config) -> dict[str, Any]:
    """``ledger.json`` (private methods) and ``privacy.json``: what the run guarantees; returns the record."""
    # One ledger per run, written by rank 0 (every rank holds the same one in memory).
    if recipe.private:
        ledger.save(run_dir / "ledger.json")
        epsilon_prv, prv_unavailable = ledger.prv_cross_check()
        record = {"guarantee": "differential privacy", "epsilon": ledger.epsilon(),
                  "epsilon_prv": epsilon_prv,
                  **({"epsilon_prv_unavailable": prv_unavailable} if prv_unavailable else {}),
                  "delta": ledger.delta,
                  "target_epsilon": epsilon, "neighbouring": "add/remove one sensitive image",
                  # Which generators drew the noise (the ledger has it per mechanism).
                  "noise_generators": sorted({entry["generator"] for entry in ledger.entries
                                              if "generator" in entry}),
                  "secure_mode": config.finetune.secure_mode}
    else:
        record = {"guarantee": "none", "reason": f"{recipe.name} is the non-private ablation (paper Section 6.1)"}
    atomic_write_json(run_dir / "privacy.json", record)
    return record


def evaluate_stage(*, synthetic: ImageDataset, config: Config, run_dir: Path, data_root: Path | None,
                   progress: bool) -> dict[str, Any]:
    """FID and CA of the synthetic set (``metrics.json``, read back when present), labelled reporting only."""

    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        return json.loads(metrics_path.read_text())
    metrics = evaluate_synthetic(synthetic=synthetic, config=config, data_root=data_root, progress=progress)
    metrics["reporting_only"] = "FID and accuracy use the sensitive test split: outside the DP guarantee"
    atomic_write_json(metrics_path, metrics)
    return metrics


def _check_same_run(run_dir: Path, *, method: str, epsilon: float | None, config: Config) -> None:
    """Refuse to resume a folder that holds another run (different method, budget or config)."""

    run_json, config_json = run_dir / "run.json", run_dir / "config.json"
    if run_json.is_file():
        # A damaged record cannot vouch for what the folder holds: refuse rather than guess.
        previous = read_json_mapping(run_json, required=("method", "epsilon", "seed"))
        if previous.get("method") != method or previous.get("epsilon") != epsilon or previous.get("seed") != config.seed:
            raise PrivImageError(
                f"{run_dir} holds a run of {previous.get('method')} at epsilon {previous.get('epsilon')} "
                f"seed {previous.get('seed')}; choose another --out"
            )
    # The experiment grid section does not change one run (run_identity), so it may differ.
    if config_json.is_file() and run_identity(config_from_dict(read_json_mapping(config_json), source=str(config_json))) \
            != run_identity(config):
        raise PrivImageError(f"{run_dir} was run with another config; choose another --out")


def _check_spending_is_traceable(run_dir: Path) -> None:
    """Refuse a folder whose ledger records spending that its fine-tuning journal no longer backs.

    Without the journal (``finetune/`` deleted or moved) a resumed run would start
    DP-SGD at step 0 and overwrite the ledger with one fine-tuning's worth, while
    the budget the earlier steps spent stays spent.
    """

    if (run_dir / "ledger.json").is_file() and not (run_dir / "finetune" / JOURNAL_NAME).is_file():
        raise PrivImageError(
            f"{run_dir} holds a ledger but not the DP-SGD journal ({Path('finetune') / JOURNAL_NAME}) that backs it: "
            "its spending cannot be resumed; choose another --out"
        )


def _check_same_pretraining_data(run_dir: Path, data_key: str) -> None:
    """Refuse to resume a run pre-trained on other data; record the data on a first run.

    The folder's name follows the config, but a selection also depends on the
    query function (`selection_stage`): a run fine-tuned from a model pre-trained
    on an earlier selection must not be resumed, or reused, as this one.
    """

    path = run_dir / "pretraining_data.json"
    if path.is_file():
        previous = read_json_mapping(path, required=("data",))["data"]
        if previous != data_key:
            raise PrivImageError(
                f"{run_dir} holds a run pre-trained on other data ({previous}, now {data_key}); "
                "choose another --out or delete the folder"
            )
        return
    atomic_write_json(path, {"data": data_key})


# --------------------------------------------------------------------------- dry run


def dry_run(*, method: str, config: Config, epsilon: float | None, data_root: Path | None = None,
            world_size: int | None = None) -> dict[str, Any]:
    """Resolve a run without training: the DP-SGD schedule, calibrated sigma, model size and per-rank batches.

    Works without the dataset files: sizes come from the registry.

    Args:
        method: a name from `privimage.methods.METHODS`.
        config: the resolved config.
        epsilon: the run's total budget (None for the non-private ablations).
        data_root: folder of real datasets.
        world_size: number of processes the run would use (default: ``$WORLD_SIZE``, else 1).

    Returns:
        The schedule as a JSON-able dict; ``distributed`` holds what each process runs;
        ``query_noise_multiplier`` (z), ``k`` and ``semantics_per_class`` (N) describe the
        semantic query of the methods that select (None for the others, z None when not private).
    """

    recipe = get_method(method)
    epsilon = check_epsilon(recipe, epsilon)
    info = dataset_info(config.data.sensitive, "train", data_root=data_root, config=config.data)
    num_examples = int(info["num_images"])
    image_channels, image_size = _image_geometry(info)
    geometry = {"image_channels": image_channels, "image_size": image_size, "num_classes": int(info["num_classes"])}
    # The networks the method trains: a UNet, or a GAN's generator and (DP-trained) discriminator.
    model_size = generator_family(recipe.generator).parameter_counts(config, **geometry)
    plan = finetune_plan(generator=recipe.generator, settings=config.finetune, num_examples=num_examples)
    sample_rate, steps = plan.sample_rate, plan.steps
    world_size = distributed.launched_world_size() if world_size is None else int(world_size)
    query = resolve_query_settings(config, data_root=data_root, private=recipe.private) if recipe.uses_query else None
    result: dict[str, Any] = {
        "method": recipe.name, "generator": recipe.generator, "sensitive": config.data.sensitive,
        "num_examples": num_examples,
        "dataset_available": bool(info.get("available", False)), "sample_rate": sample_rate, "steps": steps,
        "batch_size": plan.expected_batch_size, "epochs": plan.epochs, "lr": plan.lr,
        **model_size,
        "noise_multiplicity": plan.noise_multiplicity,
        "distributed": per_rank_batches(config=config, world_size=world_size, num_examples=num_examples),
    }
    # The query's z, k and N (k = N unless the config sets k; paper Appendix A), for the methods that select.
    result.update({"query_noise_multiplier": query.query_noise_multiplier if query and recipe.private else None,
                   "k": query.k if query else None,
                   "semantics_per_class": query.semantics_per_class if query else None})
    if not recipe.private:
        return {**result, "private": False, "epsilon": None}
    sigma, ledger = planned_calibration(recipe=recipe, config=config, num_examples=num_examples, epsilon=epsilon,
                                        data_root=data_root)
    return {
        **result, "private": True, "target_epsilon": epsilon, "delta": config.finetune.delta,
        "noise_multiplier": sigma, "epsilon": ledger.epsilon(), "epsilon_prv": ledger.prv_cross_check()[0],
    }


def planned_calibration(*, recipe: Method, config: Config, num_examples: int, epsilon: float,
                        data_root: Path | None = None) -> tuple[float, Any]:
    """The DP-SGD sigma a private run will calibrate, and its planned ledger, from the dataset's size alone.

    Appendix E: sigma is chosen so that the query (if the method makes one) plus
    the planned steps meet the target; the same plan and calibration the run
    makes, without reading any image.

    Args:
        recipe: a private method.
        config: the resolved config.
        num_examples: N, the size of the sensitive training set.
        epsilon: the run's total budget.
        data_root: folder of real datasets (for the query's N, from metadata).

    Returns:
        ``(sigma, ledger)``: the noise multiplier, and a ledger charged with the query and all planned steps.
    """

    plan = finetune_plan(generator=recipe.generator, settings=config.finetune, num_examples=num_examples)
    ledger = PrivacyLedger(delta=config.finetune.delta, dataset_hash="0" * 64, num_examples=num_examples)
    if recipe.uses_query:
        query = resolve_query_settings(config, data_root=data_root, private=True)
        ledger.record_semantic_query(query_noise_multiplier=query.query_noise_multiplier, k=query.k,
                                     generator=noise_generator_name(secure_mode=config.finetune.secure_mode))
    sigma = calibrate_to_ledger(ledger=ledger, target_epsilon=epsilon, sample_rate=plan.sample_rate, steps=plan.steps)
    ledger.record_dpsgd_steps(noise_multiplier=sigma, sample_rate=plan.sample_rate, steps=plan.steps)
    return sigma, ledger


def per_rank_batches(*, config: Config, world_size: int, num_examples: int) -> dict[str, Any]:
    """What each of ``world_size`` processes runs per step: its share of each batch and its physical chunk.

    DP-SGD: every rank Poisson-samples its shard of N / W examples at rate q, so
    its expected logical batch is batch_size / W, run in chunks of at most
    ``finetune.physical_batch_size`` (a per-process memory bound: it does not
    shrink with W). Non-private stages split each batch into W strided shares.

    Args:
        config: the resolved config.
        world_size: W, the number of processes.
        num_examples: N, the size of the sensitive training set.

    Returns:
        Per-rank batch sizes of fine-tuning, pre-training and SQF training.
    """

    if world_size < 1:
        raise ConfigError(f"world size must be >= 1, got {world_size}")
    if world_size > num_examples:
        raise ConfigError(f"world size {world_size} exceeds the {num_examples} sensitive examples to share")

    def largest_share(count: int) -> int:
        return -(-count // world_size)

    def physical(share: float, limit: int) -> int:
        # 0 means "the whole share at once" (pre-training's physical_batch_size).
        whole = math.ceil(share)
        return whole if limit <= 0 else min(limit, whole)

    finetune_share = config.finetune.batch_size / world_size
    finetune_physical = physical(finetune_share, config.finetune.physical_batch_size)
    pretrain_share = largest_share(config.pretrain.batch_size)
    return {
        "world_size": world_size,
        "finetune_expected_batch_per_rank": finetune_share,
        "finetune_physical_batch_per_rank": finetune_physical,
        "finetune_chunks_per_rank_per_step": max(1, math.ceil(finetune_share / finetune_physical)),
        "pretrain_batch_per_rank": pretrain_share,
        "pretrain_physical_batch_per_rank": physical(pretrain_share, config.pretrain.physical_batch_size),
        "gan_pretrain_batch_per_rank": largest_share(config.pretrain.gan_batch_size),
        "sqf_batch_per_rank": largest_share(config.semantics.sqf_batch_size),
    }
