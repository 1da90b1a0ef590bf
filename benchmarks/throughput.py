"""Images per second of DDIM sampling and of FID feature extraction.

``python -m benchmarks.throughput --out results/benchmarks`` writes
``throughput.json``; ``python -m benchmarks`` runs it after the DP-step
benchmark in the same process. Both measure the library's own code paths:

- DDIM: `privimage.diffusion.ddim_sample` with the quick profile's sampling
  steps and guidance, from a freshly initialised UNet (the weights do not change
  the cost);
- FID features: `privimage.evaluation.fid.OfflineFeatures` (the offline backbone's
  `SmallCNN` architecture with the quick profile's width, randomly initialised:
  the cost does not depend on the trained weights) and
  `privimage.evaluation.fid.InceptionFeatures` (pytorch-fid's FID InceptionV3,
  with its real weights when the file is on the machine, else the same
  architecture randomly initialised; ``weights`` in the JSON says which).

Each figure is the median over ``repeats`` timed calls after one warm-up call.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmarks.dp_benchmark import environment
from privimage.cache import atomic_write_json
from privimage.config import load_config
from privimage.diffusion import ddim_sample
from privimage.evaluation.step_cost import synchronize, unet_config
from privimage.models import build_unet, count_parameters

THROUGHPUT_FILE = "throughput.json"


def images_per_second(run: Callable[[], None], *, images: int, repeats: int, device: torch.device) -> dict:
    """Median images per second of ``run`` (which processes ``images`` images), after one warm-up call."""
    run()
    durations = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        durations.append(time.perf_counter() - start)
    median = statistics.median(durations)
    return {"images": images, "repeats": repeats, "median_seconds": median, "images_per_second": images / median}


def ddim_throughput(*, model: str, image_channels: int, num_images: int, repeats: int, device: torch.device) -> dict:
    """DDIM sampling speed of one UNet with the quick profile's sampling settings.

    Args:
        model: ``quick`` or a UNet preset.
        image_channels: 1 (MNIST) or 3 (CIFAR-10).
        num_images: images per sampling call (one batch).
        repeats: timed calls.
        device: where to sample.

    Returns:
        The settings and `images_per_second`'s figures.
    """
    sampling = load_config("quick").sampling
    torch.manual_seed(0)
    network = build_unet(unet_config(model), image_channels=image_channels, image_size=32, num_classes=10).to(device)
    labels = torch.arange(num_images, device=device) % 10

    def run() -> None:
        ddim_sample(network, labels=labels, image_shape=(image_channels, 32, 32), num_classes=10,
                    steps=sampling.ddim_steps, guidance_scale=sampling.guidance_scale)

    return {"what": "ddim_sampling", "model": model, "num_parameters": count_parameters(network),
            "image_shape": [image_channels, 32, 32], "ddim_steps": sampling.ddim_steps,
            "guidance_scale": sampling.guidance_scale,
            **images_per_second(run, images=num_images, repeats=repeats, device=device)}


@contextlib.contextmanager
def _random_weight_inception():
    """Let pytorch-fid build its FID InceptionV3 with random weights instead of downloading them."""
    import pytorch_fid.inception as fid_inception

    build = fid_inception._inception_v3

    def keep_initialisation(*args, **kwargs):
        network = build(*args, **kwargs)
        # The architecture is pytorch-fid's own; only the loading of the downloaded weights is skipped.
        network.load_state_dict = lambda state_dict, *a, **k: None
        return network

    original_loader = fid_inception.load_state_dict_from_url
    fid_inception._inception_v3 = keep_initialisation
    fid_inception.load_state_dict_from_url = lambda *args, **kwargs: {}
    try:
        yield
    finally:
        fid_inception._inception_v3 = build
        fid_inception.load_state_dict_from_url = original_loader


def fid_feature_extractors(*, device: torch.device) -> dict[str, tuple[object, str]]:
    """The two FID backbones of `privimage.evaluation.fid` (``offline``, ``inception``), each with a note on its weights."""
    from pytorch_fid.inception import InceptionV3

    from privimage.evaluation.fid import InceptionFeatures, OfflineFeatures, find_inception_weights
    from privimage.evaluation.networks import SmallCNN

    evaluation = load_config("quick").evaluation
    arch = {"in_channels": 1, "num_classes": 1000, "width": evaluation.fid_backbone_width,
            "embedding_dim": evaluation.fid_backbone_embedding_dim}
    torch.manual_seed(0)
    offline = OfflineFeatures(model=SmallCNN(**arch), device=device, batch_size=evaluation.fid_batch_size,
                              meta={"name": "offline-smallcnn", "hash": "random-init", "weights_sha256": "random-init",
                                    "arch": arch, "input_shape": [1, 32, 32]})
    extractors = {"offline": (offline, "random initialisation (cost does not depend on the trained weights)")}
    weights = find_inception_weights(config=evaluation)
    if weights is not None:
        extractors["inception"] = (InceptionFeatures(weights=weights, dims=2048, device=device,
                                                     batch_size=evaluation.fid_batch_size),
                                   f"pytorch-fid weights {weights}")
    else:
        inception = InceptionFeatures.__new__(InceptionFeatures)
        with _random_weight_inception():
            network = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
        inception.name, inception.feature_dims, inception.identity = "inception", 2048, "inception-2048-random"
        inception.batch_size, inception.device = evaluation.fid_batch_size, device
        inception.model = network.to(device).eval()
        extractors["inception"] = (inception,
                                   "random initialisation: the pytorch-fid weights file is not on this machine")
    return extractors


def fid_throughput(*, num_images: dict[str, int], repeats: int, device: torch.device) -> list[dict]:
    """Feature-extraction speed of each FID backbone on MNIST-shaped uint8 images (1 x 32 x 32).

    Args:
        num_images: images per call for each backbone kind (``offline``, ``inception``);
            Inception at 299 x 299 is about a thousand times the offline network's cost.
        repeats: timed calls per backbone.
        device: where to run.
    """
    results = []
    for kind, (extractor, weights) in fid_feature_extractors(device=device).items():
        images = np.random.default_rng(0).integers(0, 256, size=(num_images[kind], 1, 32, 32), dtype=np.uint8)
        results.append({"what": "fid_features", "backbone": extractor.name, "weights": weights,
                        "feature_dims": extractor.feature_dims, "image_shape": [1, 32, 32],
                        **images_per_second(lambda e=extractor, x=images: e.features(x), images=num_images[kind],
                                            repeats=repeats, device=device)})
    return results


def run_throughput(*, out: Path, device: torch.device, ddim_models: list[tuple[str, int]], ddim_images: int,
                   fid_images: dict[str, int], repeats: int, suffix: str = "") -> dict:
    """Measure DDIM and FID throughput and write ``throughput.json`` into ``out``.

    Args:
        out: output folder.
        device: where to run.
        ddim_models: (model, image channels) pairs to sample from.
        ddim_images: images per sampling call.
        fid_images: images per feature-extraction call, per backbone kind (``offline``, ``inception``).
        repeats: timed calls per figure.
        suffix: appended to the file name (``_gpu``).

    Returns:
        The JSON document written.
    """
    info = environment(device=device)
    rows = [ddim_throughput(model=model, image_channels=channels, num_images=ddim_images, repeats=repeats,
                            device=device) for model, channels in ddim_models]
    rows += fid_throughput(num_images=fid_images, repeats=repeats, device=device)
    document = {"environment": info, "rows": rows}
    atomic_write_json(Path(out) / f"{Path(THROUGHPUT_FILE).stem}{suffix}.json", document)
    return document


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the throughput measurement (shared with ``python -m benchmarks``)."""
    parser.add_argument("--ddim-images", type=int, default=20, help="images per DDIM sampling call")
    parser.add_argument("--ddim-models", nargs="+", default=["quick:1", "6.1M:3"],
                        help="model:channels pairs to sample from")
    parser.add_argument("--fid-offline-images", type=int, default=1000)
    parser.add_argument("--fid-inception-images", type=int, default=20)
    parser.add_argument("--throughput-repeats", type=int, default=3)


def throughput_from_args(args: argparse.Namespace, *, device: torch.device, suffix: str = "") -> dict:
    """Run `run_throughput` with parsed command-line options."""
    models = [(name, int(channels)) for name, channels in (item.rsplit(":", 1) for item in args.ddim_models)]
    return run_throughput(out=args.out, device=device, ddim_models=models, ddim_images=args.ddim_images,
                          fid_images={"offline": args.fid_offline_images, "inception": args.fid_inception_images},
                          repeats=args.throughput_repeats, suffix=suffix)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.cli import run_command

    def run(args: argparse.Namespace, device: torch.device) -> str:
        throughput_from_args(args, device=device, suffix=args.suffix)
        return f"throughput: wrote {Path(args.out) / (Path(THROUGHPUT_FILE).stem + args.suffix + '.json')}"

    return run_command(argv, prog=None, description=__doc__.splitlines()[0], add_arguments=add_arguments, run=run)


if __name__ == "__main__":
    sys.exit(main())
