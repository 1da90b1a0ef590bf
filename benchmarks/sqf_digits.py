"""Where the semantic query function sends handwritten digits, and what the noisy query then selects.

``python -m benchmarks.sqf_digits --threads 2 --out results/benchmarks`` writes
``sqf_digits.json`` and ``sqf_digits.md``.

The semantic query picks a digit's own glyph class only when enough of that
class's sensitive images have it as their top-1 semantic: with the quick
profile's z = 39 and k = 1 over 1,000 public classes, the noise hides every
bin below about 120 of a class's 400 votes (three noise stds). The full pipeline takes hours to show whether a change of the SQF
or of the corpus moves those shares; this command shows it in the time it
takes to train the SQF (minutes from the cache). For the profile's SQF
(``--augmentation`` and ``--sqf-epochs`` override the profile) it reports:

1. **public-val accuracy** (Glyphs-1k's validation split);
2. **public handwriting**: the share of each digit of scikit-learn's bundled
   UCI handwritten digits (1,797 images, 8x8, 43 writers, brought to MNIST's
   format) whose top-1 semantic is that digit's glyph class. Public data, so
   a setting may be chosen on it;
3. **MNIST-5k's test split, reporting only**: the same shares, each digit's
   most frequent other semantic, and a simulation of the query: the test
   split's histogram of top-k semantics (the query's k) scaled to the
   training split's size, the mechanism's Gaussian noise (std
   ``z * sqrt(k)``) drawn ``--trials`` times, and the top-N selection
   (`privimage.semantics.selection`), counting the classes whose selection
   holds their own digit. No setting may be chosen on
   this part (DESIGN.md, Privacy): it says how far the benchmark is from the
   check of 6 of 10 own digits, not what to change;
4. with ``--query-noise-multipliers``, the same simulation at each z, beside
   what that z costs: the query's own epsilon and the DP-SGD noise multiplier
   left for the profile's fine-tuning at each of its epsilons (query
   composed, ``privimage privacy calibrate``). A table for choosing a check's
   setting on privacy grounds, reporting only like part 3.

Nothing here reads the sensitive training split: its size comes from the
registry's metadata.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from privimage.errors import ConfigError

OUTPUT_FILE = "sqf_digits"
# The number of own digits the check asks a 5% selection to find.
OWN_DIGITS_CHECKED = 6


def uci_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's UCI handwritten digits in MNIST's format: 32x32 uint8 images and labels.

    The 8x8 images (16 grey levels) go through Glyphs-1k's own MNIST
    normalisation (`privimage.data.glyphs.mnist_format`): fitted into 20x20,
    centred by centre of mass, padded to 32x32.
    """
    from sklearn.datasets import load_digits

    from privimage.data.glyphs import mnist_format

    digits = load_digits()
    images = np.stack([mnist_format(image / 16.0) for image in digits.images])[:, None]
    return images, digits.target.astype(np.int64)


def own_digit_classes(public_class_names: tuple[str, ...], digit_names: tuple[str, ...]) -> list[int]:
    """The public class of each sensitive digit class ("seven" -> "DIGIT SEVEN")."""
    wanted = [f"DIGIT {name.upper()}" for name in digit_names]
    missing = [name for name in wanted if name not in public_class_names]
    if missing:
        raise ConfigError(f"the public dataset has no class {', '.join(missing)}: this benchmark needs Glyphs-1k")
    return [public_class_names.index(name) for name in wanted]


def top_k_histogram(top_k: np.ndarray, labels: np.ndarray, *, num_rows: int, num_semantics: int) -> np.ndarray:
    """Rows: digit classes; columns: public semantics; entries: images holding that semantic in their top k.

    ``top_k`` is N x k (the query's vote of each image: one for each of its k semantics).
    """
    histogram = np.zeros((num_rows, num_semantics))
    np.add.at(histogram, (np.repeat(labels, top_k.shape[1]), top_k.ravel()), 1.0)
    return histogram


def simulate_selection(histogram: np.ndarray, own: list[int], *, noise_std: float, per_row: int, trials: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Own-digit hits of the noisy top-N selection over ``trials`` noise draws: trials x rows booleans."""
    from privimage.semantics.selection import select_semantics

    hits = np.zeros((trials, len(own)), dtype=bool)
    for trial in range(trials):
        noisy = histogram + rng.normal(0.0, noise_std, size=histogram.shape)
        for row, chosen in enumerate(select_semantics(noisy, per_row=per_row)):
            hits[trial, row] = own[row] in chosen
    return hits


def query_noise_costs(config, *, query_noise_multiplier: float, train_size: int) -> dict:
    """What a query at ``query_noise_multiplier`` costs in the profile's runs (no data is read).

    Returns the query's own epsilon at the fine-tuning delta, and for each of the
    profile's epsilons the calibrated DP-SGD noise multiplier of its fine-tuning
    schedule with this query composed (None where the query alone spends the budget).
    """
    from privimage.errors import PrivacyError
    from privimage.privacy.accounting import composition_epsilon
    from privimage.privacy.calibration import calibrate_noise_multiplier
    from privimage.training.plan import finetune_schedule

    delta = config.finetune.delta
    query_epsilon = composition_epsilon(dpsgd_runs=[], query_noise_multipliers=[query_noise_multiplier],
                                        delta=delta)
    sample_rate, steps = finetune_schedule(num_examples=train_size, batch_size=config.finetune.batch_size,
                                           epochs=config.finetune.epochs)
    sigmas = {}
    for epsilon in config.experiment.epsilons:
        try:
            sigmas[f"{epsilon:g}"] = calibrate_noise_multiplier(
                target_epsilon=epsilon, delta=delta, sample_rate=sample_rate, steps=steps,
                query_noise_multiplier=query_noise_multiplier)
        except PrivacyError:
            sigmas[f"{epsilon:g}"] = None  # the query alone spends at least this epsilon
    return {"query_epsilon": query_epsilon, "delta": delta, "sample_rate": sample_rate, "steps": steps,
            "dpsgd_noise_multiplier": sigmas}


def own_digit_summary(hits: np.ndarray) -> dict[str, float]:
    """How many digits, of a trials x digits array of simulated hits, selected their own glyph."""
    counts = hits.sum(axis=1)
    return {"simulated_own_digits_mean": float(counts.mean()),
            "simulated_own_digits_median": float(np.median(counts)),
            "simulated_p_at_least_checked": float((counts >= OWN_DIGITS_CHECKED).mean())}


def strongest_rival(histogram: np.ndarray, own: list[int], digit: int, public_names) -> dict:
    """The public class other than the digit's own glyph that takes most of its votes, and its share."""
    others = histogram[digit].copy()
    others[own[digit]] = -1.0
    rival = int(np.argmax(others))
    return {"mnist_test_rival": public_names[rival],
            "mnist_test_rival_share": float(histogram[digit, rival] / max(histogram[digit].sum(), 1.0))}


def measure(*, profile: str, augmentation: str | None, sqf_epochs: int | None, trials: int, seed: int,
            data_root: Path | None, query_noise_multipliers: tuple[float, ...] = (), progress: bool = True) -> dict:
    """Train or load the SQF, score both digit sets with it, simulate the query; the JSON document."""
    from privimage.config import load_config
    from privimage.data import dataset_info, load_dataset
    from privimage.data.base import ImageDataset
    from privimage.semantics.selection import query_settings
    from privimage.semantics.stage import trained_query_function

    overrides = {}
    if augmentation is not None:
        overrides["semantics.sqf_augmentation"] = augmentation
    if sqf_epochs is not None:
        overrides["semantics.sqf_epochs"] = sqf_epochs
    config = load_config(profile, overrides)
    semantics = config.semantics
    query_function = trained_query_function(config, data_root=data_root, progress=progress)
    public_names = query_function.public_class_names
    test = load_dataset(config.data.sensitive, "test", data_root=data_root, config=config.data)
    own = own_digit_classes(public_names, test.class_names)
    # The profile's z, k and N (k = N unless the profile sets k), as a run queries them.
    query = query_settings(config=config, num_public_classes=len(public_names), num_rows=len(own))
    per_row = query.semantics_per_class

    def top_k(images: np.ndarray, labels: np.ndarray, name: str, k: int) -> np.ndarray:
        """Each image's k most probable semantics, the most probable first."""
        dataset = ImageDataset(name, "benchmark", images, labels, test.class_names)
        return np.argsort(-query_function.probabilities(dataset), axis=1, kind="stable")[:, :k]

    def own_shares(predicted: np.ndarray, labels: np.ndarray) -> list[float]:
        return [float((predicted[labels == digit] == own[digit]).mean()) for digit in range(len(own))]

    uci_images, uci_labels = uci_digits()
    uci_shares = own_shares(top_k(uci_images, uci_labels, "uci-digits", 1)[:, 0], uci_labels)
    test_top_k = top_k(test.images, test.labels, test.name, query.k)
    test_shares = own_shares(test_top_k[:, 0], test.labels)

    # The query on the training split, imitated from the test split's histogram (reporting only).
    train_size = dataset_info(config.data.sensitive, "train", data_root=data_root, config=config.data)["num_images"]
    histogram = top_k_histogram(test_top_k, test.labels, num_rows=len(own), num_semantics=len(public_names))
    histogram *= train_size / len(test)
    # A Monte Carlo estimate, not a release: seeded so that the table can be reproduced.
    hits = simulate_selection(histogram, own, noise_std=query.query_noise_multiplier * np.sqrt(query.k),
                              per_row=per_row, trials=trials, rng=np.random.default_rng(seed))

    # The same simulation at other noise levels, beside their privacy cost (reporting only).
    sweep = []
    for z in query_noise_multipliers:
        z_hits = simulate_selection(histogram, own, noise_std=z * np.sqrt(query.k), per_row=per_row,
                                    trials=trials, rng=np.random.default_rng(seed))
        sweep.append({"query_noise_multiplier": z,
                      **query_noise_costs(config, query_noise_multiplier=z, train_size=train_size),
                      **own_digit_summary(z_hits),
                      "simulated_own_selected": [float(share) for share in z_hits.mean(axis=0)]})

    rows = [{"digit": name, "uci_share": uci_shares[digit], "mnist_test_share": test_shares[digit],
             **strongest_rival(histogram, own, digit, public_names),
             "simulated_own_selected": float(hits[:, digit].mean())}
            for digit, name in enumerate(test.class_names)]
    return {
        "profile": profile, "sqf_augmentation": semantics.sqf_augmentation, "sqf_epochs": semantics.sqf_epochs,
        # The cache folder's name (the SQF's config hash), not its machine-specific path.
        "sqf_cache_key": Path(query_function.cache_dir).name,
        "public_val_accuracy": query_function.public_val_accuracy,
        "sqf_train_seconds": query_function.train_seconds,
        "query": {"k": query.k, "query_noise_multiplier": query.query_noise_multiplier,
                  "selection_ratio": semantics.selection_ratio, "semantics_per_class": per_row,
                  "train_size": train_size, "trials": trials, "seed": seed},
        "uci_mean_share": float(np.mean(uci_shares)), "mnist_test_mean_share": float(np.mean(test_shares)),
        **own_digit_summary(hits),
        "rows": rows,
        "query_noise_sweep": sweep,
    }


def markdown(document: dict) -> str:
    query = document["query"]
    lines = [
        "# Where the semantic query function sends handwritten digits",
        "",
        f"- Profile '{document['profile']}', SQF augmentation '{document['sqf_augmentation']}', "
        f"{document['sqf_epochs']} epochs; public-val accuracy {document['public_val_accuracy']:.3f}.",
        "- *UCI*: scikit-learn's handwritten digits (public). *MNIST test*: MNIST-5k's test split, reporting only.",
        f"- *selected*: share of {query['trials']} simulated queries (k={query['k']}, "
        f"z={query['query_noise_multiplier']:g}, {query['semantics_per_class']} semantics per class, "
        f"the test split's histogram scaled to {query['train_size']} images) whose selection for the class "
        "holds its own digit.",
        "",
        "| digit | UCI own | MNIST test own | MNIST test's first other semantic | its share | selected |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for row in document["rows"]:
        lines.append(f"| {row['digit']} | {row['uci_share']:.2f} | {row['mnist_test_share']:.2f} | "
                     f"{row['mnist_test_rival']} | {row['mnist_test_rival_share']:.2f} | "
                     f"{row['simulated_own_selected']:.2f} |")
    lines += [
        f"| mean | {document['uci_mean_share']:.3f} | {document['mnist_test_mean_share']:.3f} | | | |",
        "",
        f"Own digits per simulated query: mean {document['simulated_own_digits_mean']:.2f}, "
        f"median {document['simulated_own_digits_median']:g}; {OWN_DIGITS_CHECKED} or more in "
        f"{document['simulated_p_at_least_checked']:.1%} of queries.",
    ]
    sweep = document.get("query_noise_sweep") or []
    if sweep:
        epsilons = list(sweep[0]["dpsgd_noise_multiplier"])
        lines += [
            "",
            "## The same simulation at other query noise (reporting only)",
            "",
            f"*query epsilon*: the query alone at delta {sweep[0]['delta']:g} (RDP). *DP-SGD sigma at epsilon E*: "
            f"the fine-tuning noise multiplier calibrated with the query composed (q = {sweep[0]['sample_rate']:g}, "
            f"{sweep[0]['steps']} steps); - where the query alone spends E.",
            "",
            "| z | query epsilon | " + " | ".join(f"DP-SGD sigma at epsilon {e}" for e in epsilons)
            + " | own digits per query (mean) | median | " + f"{OWN_DIGITS_CHECKED} or more |",
            "|---:|---:|" + "---:|" * len(epsilons) + "---:|---:|---:|",
        ]
        for row in sweep:
            sigmas = [row["dpsgd_noise_multiplier"][e] for e in epsilons]
            lines.append(f"| {row['query_noise_multiplier']:g} | {row['query_epsilon']:.3f} | "
                         + " | ".join("-" if sigma is None else f"{sigma:.3f}" for sigma in sigmas)
                         + f" | {row['simulated_own_digits_mean']:.2f} | {row['simulated_own_digits_median']:g} | "
                         f"{row['simulated_p_at_least_checked']:.1%} |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="quick", help="smoke, quick, paper or a YAML path")
    parser.add_argument("--augmentation", choices=("shift", "affine"), default=None,
                        help="the SQF's training augmentation (default: the profile's)")
    parser.add_argument("--sqf-epochs", type=int, default=None, help="the SQF's epochs (default: the profile's)")
    parser.add_argument("--trials", type=int, default=2000, help="simulated queries")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulation's noise (not a release)")
    parser.add_argument("--query-noise-multipliers", type=float, nargs="+", default=(), metavar="Z",
                        help="also simulate the query at each z, beside its privacy cost (reporting only)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder of real datasets (default: $PRIVIMAGE_DATA, else ./data)")


def sqf_digits_from_args(args: argparse.Namespace) -> str:
    from privimage.data.registry import resolve_data_root

    if args.trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {args.trials}")
    if args.sqf_epochs is not None and args.sqf_epochs < 1:
        raise ConfigError(f"--sqf-epochs must be at least 1, got {args.sqf_epochs}")
    bad = [z for z in args.query_noise_multipliers if not z > 0]
    if bad:
        raise ConfigError(f"--query-noise-multipliers must be positive, got {bad[0]:g}")
    document = measure(profile=args.profile, augmentation=args.augmentation, sqf_epochs=args.sqf_epochs,
                       trials=args.trials, seed=args.seed, data_root=resolve_data_root(args.data_root),
                       query_noise_multipliers=tuple(args.query_noise_multipliers))
    from benchmarks.cli import write_report

    return "sqf_digits: " + write_report(args.out, f"{OUTPUT_FILE}{args.suffix}", document, markdown(document))


def main(argv: list[str] | None = None) -> int:
    from benchmarks.cli import run_command

    return run_command(argv, prog="python -m benchmarks.sqf_digits", description=__doc__.splitlines()[0],
                       add_arguments=add_arguments, run=lambda args, device: sqf_digits_from_args(args))


if __name__ == "__main__":
    sys.exit(main())
