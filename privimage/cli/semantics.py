"""``privimage select`` and ``privimage sds``: the private semantic query and SDS (paper Sections 3.2-3.3, Eq. 5)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from privimage.cli.common import data_root_option, emit, finish_command
from privimage.errors import PrivImageError


def register(subparsers: argparse._SubParsersAction) -> None:
    select = subparsers.add_parser(
        "select",
        help="query the sensitive data's semantics under DP and select public pre-training data",
        description="Train (or load) the semantic query function on the public data, query the sensitive "
        "dataset's semantic distribution with Gaussian noise, select the top semantics per class, and write "
        "OUT/selection.json (selected semantics, achieved ratio, ledger) and OUT/noisy_histogram.npz.",
    )
    select.add_argument("--public", default=None, help="public dataset (default: the profile's, glyphs1k)")
    select.add_argument("--sensitive", default=None, help="sensitive dataset (default: the profile's, mnist5k)")
    select.add_argument("--selection-ratio", type=float, default=None, help="fraction of public data to select")
    select.add_argument("--query-noise-multiplier", type=float, default=None, help="z: noise std is z*sqrt(k)")
    select.add_argument("--k", type=int, default=None,
                        help="semantics queried per sensitive image (default: the profile's; k = N, the "
                        "semantics selected per class, unless the profile sets k)")
    select.add_argument("--delta", type=float, default=None, help="delta for the reported epsilon")
    select.add_argument("--out", type=Path, required=True, help="output folder")
    finish_command(select, _select)

    sds = subparsers.add_parser(
        "sds",
        help="semantic distribution similarity of two datasets (paper Eq. 5)",
        description="SDS between two datasets from GloVe vectors of their semantics. A dataset is NAME (all "
        "its classes, by image count; the profile's sensitive dataset by its label set, uniformly) or "
        "NAME:SELECTION_JSON (the public semantics a selection chose, by image count).",
    )
    sds.add_argument("--a", required=True, help="NAME or NAME:SELECTION_JSON")
    sds.add_argument("--b", required=True, help="NAME or NAME:SELECTION_JSON")
    sds.add_argument("--split", default="train", help="split of a dataset given by NAME (default: train)")
    finish_command(sds, _sds)


def _select(args: argparse.Namespace) -> int:
    from privimage.config import load_config
    from privimage.data import load_sensitive_train
    from privimage.privacy import PrivacyLedger
    from privimage.run_folder import check_release_location
    from privimage.semantics.stage import check_public_name, run_selection

    overrides = {
        "data.public": args.public, "data.sensitive": args.sensitive,
        "semantics.selection_ratio": args.selection_ratio, "semantics.query_noise_multiplier": args.query_noise_multiplier,
        "semantics.k": args.k, "finetune.delta": args.delta,
    }
    config = load_config(args.profile, {key: value for key, value in overrides.items() if value is not None})
    # Each call is a new noisy release of the sensitive data: overwriting an earlier one
    # would lose its record (and its ledger) while the spending stands.
    if (Path(args.out) / "selection.json").exists():
        raise PrivImageError(f"{Path(args.out) / 'selection.json'} already holds an earlier release; "
                             "choose another --out, or remove it knowing its budget stays spent")
    # Where the release goes, and what it selects from, are checked before any work and the sensitive read.
    check_release_location(out_dir=args.out, command="select")
    check_public_name(config)
    data_root = data_root_option(args)
    sensitive = load_sensitive_train(config, data_root=data_root)
    ledger = PrivacyLedger(delta=config.finetune.delta, dataset_hash=sensitive.content_hash(), num_examples=len(sensitive))
    result = run_selection(config, ledger=ledger, out_dir=args.out, data_root=data_root, sensitive=sensitive)
    path = Path(args.out) / "selection.json"
    summary = result.summary
    if args.json:
        emit({"selection_json": str(path), "selection_ratio": summary["selection_ratio"],
              "query_noise_multiplier": summary["query_noise_multiplier"], "k": summary["k"],
              "semantics_per_class": summary["semantics_per_class"],
              "epsilon": ledger.epsilon(), "delta": ledger.delta,
              "public_val_accuracy": summary["sqf"]["public_val_accuracy"], "selected": summary["selected"]}, True)
    else:
        for name, chosen in summary["selected"].items():
            print(f"{name:>12}: {', '.join(chosen)}")
        print(f"N = {summary['semantics_per_class']} semantics per class, queried with k = {summary['k']} "
              f"and z = {summary['query_noise_multiplier']:g}; "
              f"achieved selection ratio {summary['selection_ratio']:.4f}; SQF public-val accuracy "
              f"{summary['sqf']['public_val_accuracy']:.3f}; query epsilon {ledger.epsilon():.4g} at delta {ledger.delta:g}")
        print(path)
    return 0


def _frequencies(spec: str, args: argparse.Namespace, config) -> dict[str, float]:
    """{semantic: frequency} of NAME or NAME:SELECTION_JSON."""
    from privimage.data import load_dataset
    from privimage.semantics import dataset_frequencies

    # folder:PATH and npz:PATH hold a colon too: only a trailing ":....json" names a selection.
    name, _, selection_path = spec.rpartition(":")
    if name and selection_path and Path(selection_path).is_dir():
        raise PrivImageError(f"{selection_path} is a folder: give the selection.json inside it, "
                             f"e.g. {name}:{Path(selection_path) / 'selection.json'}")
    if not (name and selection_path.endswith(".json")):
        name, selection_path = spec, ""
    if selection_path:
        path = Path(selection_path)
        if not path.is_file():
            raise PrivImageError(f"selection file not found: {path}")
        try:
            summary = json.loads(path.read_text())
            counts = summary["selected_counts"]
            if not isinstance(counts, dict):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            raise PrivImageError(f"{path} is not a selection.json written by 'privimage select'") from None
        if summary.get("public") != name:
            raise PrivImageError(f"{path} selects from '{summary.get('public')}', not '{name}'")
        return {key: float(value) for key, value in counts.items()}
    from privimage.data.registry import is_sensitive_name

    if is_sensitive_name(name, config.data):
        # A sensitive dataset is described by its label set, uniformly (as the paper
        # describes CIFAR-10 by its 10 labels): its label counts are data, and reading
        # them here would be a query no ledger accounts for.
        from privimage.data import dataset_info

        info = dataset_info(name, args.split, data_root=data_root_option(args), config=config.data)
        return {class_name: 1.0 for class_name in info["class_names"]}
    dataset = load_dataset(name, args.split, data_root=data_root_option(args), config=config.data)
    return dataset_frequencies(dataset)


def _sds(args: argparse.Namespace) -> int:
    from privimage.config import load_config
    from privimage.semantics import semantic_distribution_similarity

    config = load_config(args.profile)
    value = semantic_distribution_similarity(_frequencies(args.a, args, config), _frequencies(args.b, args, config))
    emit({"sds": value, "a": args.a, "b": args.b}, args.json, human=f"SDS({args.a}, {args.b}) = {value:.4f}")
    return 0
