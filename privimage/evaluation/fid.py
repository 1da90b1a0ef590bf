"""Fréchet Inception Distance (paper Section 4.3) with pytorch-fid.

The distance itself is pytorch-fid's ``calculate_frechet_distance`` on the mean
and covariance of feature vectors. The features come from one of two backbones:

- ``inception``: pytorch-fid's ``InceptionV3`` (the TensorFlow FID weights),
  whenever its weights file is on the machine: ``evaluation.inception_weights``,
  else ``$PRIVIMAGE_INCEPTION_WEIGHTS``, else the file pytorch-fid downloads into
  the torch hub cache. It is downloaded only on request
  (`download_inception_weights`, ``privimage evaluate --download-inception``).
- ``offline-smallcnn-<public>``: the fixed public-data network of
  `privimage.evaluation.backbone`, when the weights are absent.

Values from different backbones are not comparable, so every result carries the
backbone's name and both sample counts. Real and synthetic images pass through
the same path: uint8 -> float, grayscale -> 3 channels and bilinear resize to
299 inside InceptionV3 (as pytorch-fid does for image files), or channel and
size adaptation to the offline backbone's training shape.

Reference statistics of the real split (the sensitive test split, for reporting
only) are computed once per backbone and cached under
``cache_root()/fid_reference/<hash>/``.

The offline features are rescaled with public statistics (`FeatureStandardisation`,
``evaluation.fid_offline_scale``); what that keeps and what it does not is derived there.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_fid.inception as fid_inception
import torch
import torch.nn.functional as F
from pytorch_fid.fid_score import calculate_frechet_distance
from pytorch_fid.inception import FID_WEIGHTS_URL, InceptionV3
from tqdm.auto import tqdm

from privimage.cache import atomic_save_npz, atomic_write_json, file_sha256, stage_dir
from privimage.config import Config, EvaluationConfig, config_hash
from privimage.data.base import ImageDataset, refuse_sensitive
from privimage.errors import ConfigError, DataError, PrivImageError

# load_split through its module, so a loader replaced there (a test's stand-in corpus) is the one called.
from privimage.evaluation import datasets as evaluation_datasets
from privimage.evaluation.backbone import backbone_name, load_or_train_backbone
from privimage.evaluation.datasets import PUBLIC_TRAIN_SPLIT, PUBLIC_VALIDATION_SPLIT
from privimage.evaluation.networks import SmallCNN, default_device

INCEPTION_ENV = "PRIVIMAGE_INCEPTION_WEIGHTS"
INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_DIMS = (64, 192, 768, 2048)
BACKBONE_CHOICES = ("auto", "inception", "offline")
OFFLINE_SCALES = ("public-standardised", "public-common", "raw")
# Bump when the standardisation changes, so stale cached statistics are not reused.
STANDARDISATION_VERSION = 1
INCEPTION_SCALE = "unscaled Inception features (standard FID)"
RAW_OFFLINE_SCALE = "unscaled (raw offline features)"


# --------------------------------------------------------------------------- backbone choice


def hub_inception_path() -> Path:
    """Where pytorch-fid's downloader stores the Inception weights (torch hub cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def find_inception_weights(*, config: EvaluationConfig) -> Path | None:
    """Locate pytorch-fid's Inception weights without touching the network.

    Args:
        config: evaluation settings; ``inception_weights`` wins when set.

    Returns:
        The weights file, or None when none of the three places has it.
    """
    # A path the user named must exist: silently measuring with another backbone would mislead.
    if config.inception_weights:
        path = Path(config.inception_weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"evaluation.inception_weights: file not found: {path}")
        return path
    env = os.environ.get(INCEPTION_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigError(f"${INCEPTION_ENV}: file not found: {path}")
        return path
    hub = hub_inception_path()
    return hub if hub.is_file() else None


def download_inception_weights() -> Path:
    """Download pytorch-fid's Inception weights into the torch hub cache (needs a network).

    Returns:
        The path of the downloaded (hash-checked) file.
    """

    try:
        torch.hub.load_state_dict_from_url(FID_WEIGHTS_URL, progress=True, check_hash=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any network or hash failure becomes one clear line
        raise DataError(
            f"could not download the Inception weights from {FID_WEIGHTS_URL} ({exc.__class__.__name__}); "
            f"place the file at {hub_inception_path()} or set ${INCEPTION_ENV}"
        ) from None
    return hub_inception_path()


@dataclass(frozen=True)
class BackboneChoice:
    """Which FID backbone a config selects, known before any work is done."""

    kind: str  # "inception" or "offline"
    name: str
    feature_dims: int
    inception_weights: Path | None = None
    scale: str = INCEPTION_SCALE  # how the features are scaled, as results and tables print it


def standardised_scale_label(public_name: str, split: str, *, common: bool = False) -> str:
    """How a result names a public offline scale, e.g. ``standardised on public glyphs1k/val``."""
    if common:
        return f"divided by one common std of public {public_name}/{split}"
    return f"standardised on public {public_name}/{split}"


def choose_backbone(*, config: EvaluationConfig, public_name: str) -> BackboneChoice:
    """Resolve ``evaluation.fid_backbone`` into a backbone, its label and feature size.

    Args:
        config: evaluation settings.
        public_name: the public dataset an offline backbone trains on.

    Returns:
        A `BackboneChoice` (nothing is loaded or trained).
    """
    if config.fid_backbone not in BACKBONE_CHOICES:
        raise ConfigError(f"evaluation.fid_backbone must be one of {', '.join(BACKBONE_CHOICES)}, got '{config.fid_backbone}'")
    if config.fid_offline_scale not in OFFLINE_SCALES:
        raise ConfigError(f"evaluation.fid_offline_scale must be one of {', '.join(OFFLINE_SCALES)}, "
                          f"got '{config.fid_offline_scale}'")
    if config.fid_inception_dims not in INCEPTION_DIMS:
        raise ConfigError(f"evaluation.fid_inception_dims must be one of {INCEPTION_DIMS}, got {config.fid_inception_dims}")
    weights = find_inception_weights(config=config) if config.fid_backbone != "offline" else None
    if config.fid_backbone == "inception" and weights is None:
        raise DataError(
            f"evaluation.fid_backbone is 'inception' but no weights file was found (evaluation.inception_weights, "
            f"${INCEPTION_ENV}, or {hub_inception_path()}); run `privimage evaluate --download-inception` where a network exists"
        )
    if weights is not None:
        return BackboneChoice("inception", "inception", config.fid_inception_dims, weights)

    scale = (RAW_OFFLINE_SCALE if config.fid_offline_scale == "raw" else
             standardised_scale_label(public_name, PUBLIC_VALIDATION_SPLIT,
                                      common=config.fid_offline_scale == "public-common"))
    return BackboneChoice("offline", backbone_name(public_name), config.fid_backbone_embedding_dim, scale=scale)


def check_fid_sample_count(*, num_images: int, feature_dims: int, backbone: str, role: str,
                           allow_singular_covariance: bool) -> None:
    """Refuse a set too small for a full-rank feature covariance.

    pytorch-fid estimates a ``feature_dims`` x ``feature_dims`` covariance; with
    ``feature_dims`` or fewer images it is singular and the matrix square root
    of the distance is unreliable.

    Args:
        num_images: images in the set.
        feature_dims: length of the backbone's feature vectors.
        backbone: the backbone's name, for the message.
        role: ``synthetic`` or ``real``, for the message.
        allow_singular_covariance: accept down to 2 images (pytorch-fid then
            regularises the covariance).
    """
    needed = 2 if allow_singular_covariance else feature_dims + 1
    if num_images < needed:
        hint = ("" if allow_singular_covariance else
                "; use more images, a smaller feature block (evaluation.fid_inception_dims), "
                "or set evaluation.fid_allow_singular_covariance: true")
        raise DataError(
            f"FID with the {backbone} backbone ({feature_dims}-d features) needs at least {needed} {role} images "
            f"for a full-rank covariance, got {num_images}{hint}"
        )


# --------------------------------------------------------------------------- feature extractors


class FeatureExtractor:
    """Maps uint8 N x C x H x W images to float64 feature vectors (N x feature_dims)."""

    name: str
    identity: str  # cache key: changes whenever the features would
    feature_dims: int
    scale: str = INCEPTION_SCALE
    batch_size: int = 200
    device: torch.device = torch.device("cpu")

    def _batch_features(self, batch: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def features(self, images: np.ndarray, *, progress: bool = False) -> np.ndarray:
        """Features of all images, computed in batches."""
        outputs = []
        starts = range(0, len(images), self.batch_size)
        for start in tqdm(starts, desc=f"FID features ({self.name})", disable=not progress, leave=False):
            batch = torch.from_numpy(np.ascontiguousarray(images[start:start + self.batch_size])).to(self.device)
            outputs.append(self._batch_features(batch).double().cpu())
        return torch.cat(outputs).numpy() if outputs else np.zeros((0, self.feature_dims))


class InceptionFeatures(FeatureExtractor):
    """pytorch-fid's InceptionV3 pooled features (pool3 = 2048-d by default)."""

    def __init__(self, *, weights: Path, dims: int = 2048, batch_size: int = 200, device: torch.device | None = None):
        self.name = "inception"
        self.feature_dims = dims
        self.batch_size = batch_size
        self.device = device or default_device()
        self.identity = f"inception-{dims}-{_file_digest(weights)}"
        with _local_inception_weights(weights):
            model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[dims]])
        self.model = model.to(self.device).eval()

    def _batch_features(self, batch: torch.Tensor) -> torch.Tensor:
        # pytorch-fid reads image files as RGB floats in [0, 1]; InceptionV3 resizes to 299 itself.
        images = batch.float() / 255.0
        if images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        features = self.model(images)[0]
        # As pytorch-fid's get_activations: pool blocks that are not already 1x1.
        if features.shape[2:] != (1, 1):
            features = F.adaptive_avg_pool2d(features, output_size=(1, 1))
        return features.flatten(1)


@dataclass(frozen=True)
class FeatureStandardisation:
    """Per-feature mean and standard deviation of the offline features on public data.

    The offline backbone's 128-d features are unnormalised, so its raw FIDs run into
    the thousands. By default (``public-common``) every feature is divided by one
    common public standard deviation, which keeps every ordering exactly (below);
    ``public-standardised`` standardises each feature, x -> (x - m) / s, with
    the per-feature mean m and standard deviation s of the backbone's features on
    the *public* validation split (Glyphs-1k by default; never the sensitive data,
    either split), computed once and cached under
    ``cache_root()/fid_feature_scale/<hash>/`` (hash of the backbone's identity and
    of the public split's content). Every run measured with one backbone uses the
    same m and s, so its FIDs compare across runs; the scale is named in every
    result (``fid_scale``) and table. Inception features are never rescaled.

    What the rescaling guarantees, and what it does not. With D = diag(1/s), the
    statistics become (D (mu - m), D Sigma D); the Fréchet distance is the squared
    2-Wasserstein distance W2^2 between the two Gaussians, and for the invertible D
    every coupling maps to a coupling of the images, so

        FID_raw / max(s)^2  <=  FID_standardised  <=  FID_raw / min(s)^2.

    - The shift m cancels exactly; a set against itself is still 0.
    - One common factor for all features would multiply every FID by the same
      constant and keep every order. A per-feature scale does not: the bound above
      only guarantees that two pairs keep their order when their raw FIDs differ by
      more than the factor (max(s) / min(s))^2; closer pairs can swap, because the
      rescaling re-weights which feature directions count.
    - So the ordering of methods is not a theorem. On fixed features
      (tests/test_evaluation_fid.py) a ladder of one kind of damage keeps its
      order, and pairs whose raw FIDs differ by more than half keep theirs; two
      sets damaged in different ways with raw FIDs within about 30% of each other
      were seen to swap. Every result on this scale also carries ``fid_unscaled``,
      the same pair on the raw features, so a table's order can be checked, and
      ``fid_offline_scale: raw`` keeps the old scale.
    - ``fid_offline_scale: public-common`` divides every feature by one common
      public std (the root mean public variance) instead: every FID is the raw one
      divided by the same constant, so every order is kept exactly, at the price
      of letting the features with the largest spread dominate, as raw FID does.
    """

    mean: np.ndarray
    std: np.ndarray
    label: str  # e.g. "standardised on public glyphs1k/val"
    dataset: str  # the public split the statistics come from, e.g. "glyphs1k/val"
    key: str  # cache hash: the backbone identity and the public split's content


class OfflineFeatures(FeatureExtractor):
    """Penultimate features of the offline public-data backbone (before the ReLU, see `SmallCNN`).

    With a `FeatureStandardisation` the features are standardised with public
    statistics (see the module docstring for what that preserves); without one
    they are raw.
    """

    def __init__(self, *, model: SmallCNN, meta: dict, batch_size: int = 200, device: torch.device | None = None,
                 standardisation: FeatureStandardisation | None = None):
        self.name = meta["name"]
        # The weights' digest, not only the settings that trained them: two machines
        # can train different weights from the same settings, and FIDs compare only
        # under one backbone.
        self.identity = f"{meta['name']}-{meta['hash']}-{meta['weights_sha256']}"
        self.standardisation = standardisation
        self.scale = RAW_OFFLINE_SCALE
        if standardisation is not None:
            # Cached reference statistics must not mix scales.
            self.identity += f"-std-{standardisation.key}"
            self.scale = standardisation.label
        self.feature_dims = int(meta["arch"]["embedding_dim"])
        self.input_shape = tuple(meta["input_shape"])
        self.batch_size = batch_size
        self.device = device or default_device()
        self.model = model.to(self.device).eval()
        self.meta = meta

    def _batch_features(self, batch: torch.Tensor) -> torch.Tensor:
        # The backbone's own input range, channel count and size (what it was trained on).
        images = batch.float() / 127.5 - 1.0
        channels, height, width = self.input_shape
        if images.shape[1] == 1 and channels == 3:
            images = images.repeat(1, 3, 1, 1)
        elif images.shape[1] == 3 and channels == 1:
            # ITU-R 601 luma, as PIL's convert("L").
            luma = torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)
            images = (images * luma).sum(dim=1, keepdim=True)
        if images.shape[2:] != (height, width):
            images = F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        return self.model.embed_pre_activation(images)

    def features(self, images: np.ndarray, *, progress: bool = False) -> np.ndarray:
        """Features of all images, standardised with the public statistics when the extractor has them."""
        raw = super().features(images, progress=progress)
        if self.standardisation is None:
            return raw
        return (raw - self.standardisation.mean) / self.standardisation.std


def common_factor(standardisation: FeatureStandardisation) -> FeatureStandardisation:
    """One std for every feature, the root mean public variance: every FID is divided by its square.

    Args:
        standardisation: the per-feature public statistics.

    Returns:
        The same shift with ``std`` replaced by its root mean square, labelled as a common factor.
    """
    rms = float(np.sqrt(np.mean(standardisation.std ** 2)))
    name, split = standardisation.dataset.rsplit("/", 1)
    return FeatureStandardisation(mean=standardisation.mean, std=np.full_like(standardisation.std, rms),
                                  label=standardised_scale_label(name, split, common=True),
                                  dataset=standardisation.dataset, key=f"{standardisation.key}-common")


def public_feature_standardisation(
    *,
    extractor: OfflineFeatures,
    public: ImageDataset,
    progress: bool = False,
) -> FeatureStandardisation:
    """Per-feature mean and std of the raw offline features on a public split, computed once and cached.

    Args:
        extractor: the offline backbone without a standardisation (raw features).
        public: the public split the statistics come from (never sensitive data).
        progress: show a progress bar when computing.

    Returns:
        A `FeatureStandardisation` labelled with the public split's name.
    """
    # Public data only, like the backbone itself: the sensitive set never sets the scale.
    refuse_sensitive(public, "the FID feature standardisation")
    if extractor.standardisation is not None:
        raise PrivImageError("public_feature_standardisation needs the raw offline features")
    key = config_hash({"version": STANDARDISATION_VERSION, "backbone": extractor.identity,
                       "public": public.content_hash()})
    label = standardised_scale_label(public.name, public.split)
    folder = stage_dir("fid_feature_scale", key)
    stats_path, meta_path = folder / "stats.npz", folder / "meta.json"
    if stats_path.is_file() and meta_path.is_file():
        with np.load(stats_path) as stats:
            return FeatureStandardisation(mean=stats["mean"], std=stats["std"], label=label,
                                          dataset=f"{public.name}/{public.split}", key=key)
    if len(public) < 2:
        raise DataError(f"FID feature standardisation needs at least 2 public images, got {len(public)} in "
                        f"{public.name}/{public.split}")
    features = extractor.features(public.images, progress=progress)
    mean, std = features.mean(axis=0), features.std(axis=0, ddof=1)
    # A feature constant on the public data would divide by zero; it carries no public scale to read.
    if not (std > 0).all():
        raise DataError(f"FID feature standardisation: {int((std <= 0).sum())} offline features are constant on "
                        f"{public.name}/{public.split}; retrain the backbone or set evaluation.fid_offline_scale: raw")
    atomic_save_npz(stats_path, mean=mean, std=std)
    atomic_write_json(meta_path, {
        "dataset": f"{public.name}/{public.split}", "dataset_hash": public.content_hash(),
        "use": "public data only: per-feature scale of the offline FID features",
        "backbone_identity": extractor.identity, "num_images": len(public),
        "std_min": float(std.min()), "std_max": float(std.max()),
    })
    return FeatureStandardisation(mean=mean, std=std, label=label, dataset=f"{public.name}/{public.split}", key=key)


_INCEPTION_LOCK = threading.Lock()
_DIGESTS: dict[tuple[str, int, float], str] = {}


@contextlib.contextmanager
def _local_inception_weights(path: Path):
    """Make pytorch-fid build InceptionV3 from a local file instead of its download URL.

    pytorch-fid 0.3.0 hard-wires ``load_state_dict_from_url(FID_WEIGHTS_URL)`` in
    ``fid_inception_v3``; this swaps that one loader for a ``weights_only`` load
    of ``path`` while the network is built, so no network is ever reached.
    """

    def load_local(url, *args, **kwargs):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - unpickling errors have many types; one line for the user
            raise DataError(f"{path}: not a readable PyTorch weights file ({exc.__class__.__name__})") from None

    with _INCEPTION_LOCK:
        original = fid_inception.load_state_dict_from_url
        fid_inception.load_state_dict_from_url = load_local
        try:
            yield
        except RuntimeError as exc:
            raise DataError(f"{path}: not a pytorch-fid Inception state dict ({str(exc).splitlines()[0]})") from None
        finally:
            fid_inception.load_state_dict_from_url = original


def _file_digest(path: Path) -> str:
    """SHA-256 prefix of a weights file (memoised per path, size and mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(path)
    return _DIGESTS[key]


def load_fid_backbone(
    *,
    config: Config,
    data_root: Path | None = None,
    public_train: ImageDataset | None = None,
    public_validation: ImageDataset | None = None,
    device: torch.device | None = None,
    progress: bool = False,
) -> FeatureExtractor:
    """Build the FID feature extractor a config selects (training the offline one on first use).

    Args:
        config: the resolved config (``evaluation`` and ``data.public``).
        data_root: folder of real datasets, for loading the public corpus.
        public_train, public_validation: public splits to use instead of loading
            ``config.data.public`` (e.g. an own public corpus).
        device: where to compute features (default: CUDA when present).
        progress: show progress bars.

    Returns:
        An `InceptionFeatures` or `OfflineFeatures`.
    """
    public_name = public_train.name if public_train is not None else config.data.public
    choice = choose_backbone(config=config.evaluation, public_name=public_name)
    if choice.kind == "inception":
        return InceptionFeatures(weights=choice.inception_weights, dims=choice.feature_dims,
                                 batch_size=config.evaluation.fid_batch_size, device=device)
    # Offline: the public corpus trains the backbone once; later calls read the cache.
    if public_train is None:
        public_train = evaluation_datasets.load_split(name=config.data.public, split=PUBLIC_TRAIN_SPLIT,
                                                      data_root=data_root, config=config.data)
    if public_validation is None:
        public_validation = evaluation_datasets.load_split(name=config.data.public, split=PUBLIC_VALIDATION_SPLIT,
                                                           data_root=data_root, config=config.data)
    standardise = config.evaluation.fid_offline_scale != "raw"
    # The scale reads public data only: never the sensitive dataset, either split.
    if standardise and public_validation.name == config.data.sensitive:
        raise DataError(f"the FID feature standardisation reads public data only, but its split is from the "
                        f"sensitive dataset '{config.data.sensitive}'")
    model, meta = load_or_train_backbone(public_train=public_train, public_validation=public_validation,
                                         config=config.evaluation, device=device, progress=progress)
    raw = OfflineFeatures(model=model, meta=meta, batch_size=config.evaluation.fid_batch_size, device=device)
    if not standardise:
        return raw
    # The scale comes from the held-out public split, the images the backbone did not fit.
    standardisation = public_feature_standardisation(extractor=raw, public=public_validation, progress=progress)
    if config.evaluation.fid_offline_scale == "public-common":
        standardisation = common_factor(standardisation)
    return OfflineFeatures(model=model, meta=meta, batch_size=config.evaluation.fid_batch_size, device=device,
                           standardisation=standardisation)


# --------------------------------------------------------------------------- statistics and distance


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of feature vectors, as pytorch-fid computes them."""
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def reference_statistics(
    *,
    real: ImageDataset,
    extractor: FeatureExtractor,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Feature statistics of the real reference split, computed once per backbone and cached.

    The reference is the sensitive dataset's test split, used for reporting only;
    the sensitive training split is refused.

    Args:
        real: the reference images.
        extractor: the FID backbone.
        progress: show a progress bar when computing.

    Returns:
        ``(mu, sigma, meta)``.
    """
    if real.sensitive:
        raise DataError(
            f"FID reference statistics must not read the sensitive training set '{real.name}/{real.split}'; "
            "use its test split (reporting only)"
        )
    key = config_hash({"dataset": real.content_hash(), "backbone": extractor.identity})
    folder = stage_dir("fid_reference", key)
    stats_path, meta_path = folder / "stats.npz", folder / "meta.json"
    if stats_path.is_file() and meta_path.is_file():
        with np.load(stats_path) as stats:
            return stats["mu"], stats["sigma"], json.loads(meta_path.read_text())
    mu, sigma = feature_statistics(extractor.features(real.images, progress=progress))
    meta = {
        "dataset": f"{real.name}/{real.split}",
        "dataset_hash": real.content_hash(),
        "use": "reporting only (FID reference of the sensitive test split)",
        "backbone": extractor.name,
        "backbone_identity": extractor.identity,
        "scale": extractor.scale,
        "feature_dims": extractor.feature_dims,
        "num_images": len(real),
    }
    atomic_save_npz(stats_path, mu=mu, sigma=sigma)
    atomic_write_json(meta_path, meta)
    return mu, sigma, meta


def pytorch_fid_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """pytorch-fid's ``calculate_frechet_distance``, with its failure as one user-facing error."""

    try:
        # pytorch-fid 0.3.0 passes scipy's deprecated `disp` argument; that is not the user's concern.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*`disp` argument is deprecated", category=DeprecationWarning)
            return float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))
    except ValueError as exc:
        # pytorch-fid raises on a matrix square root with a large imaginary part (singular covariances).
        raise PrivImageError(f"FID failed: {str(exc).splitlines()[0]}; use more images") from None


def unstandardised_statistics(mu: np.ndarray, sigma: np.ndarray,
                              scale: FeatureStandardisation) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of standardised features mapped back to the raw scale (x = s z + m)."""
    return mu * scale.std + scale.mean, sigma * np.outer(scale.std, scale.std)


def frechet_distance(
    *,
    synthetic: ImageDataset,
    real: ImageDataset,
    extractor: FeatureExtractor,
    allow_singular_covariance: bool = False,
    progress: bool = False,
) -> dict:
    """FID between a synthetic set and the real reference split.

    Args:
        synthetic: generated images (uint8, same shape as ``real``).
        real: reference images (the sensitive test split; statistics cached).
        extractor: the FID backbone (`load_fid_backbone`).
        allow_singular_covariance: accept sets with no more images than feature
            dimensions (see `check_fid_sample_count`).
        progress: show progress bars.

    Returns:
        ``{"fid", "fid_backbone", "fid_scale", "fid_backbone_identity", "fid_feature_dims",
        "fid_num_synthetic", "fid_num_real", "fid_reference"}``, and on the
        rescaled offline scales ``fid_unscaled``, the same pair's FID on
        the raw features (for checking that a table keeps its order).
    """
    # The same quantisation and resize for both sides requires the same stored shape.
    if synthetic.image_shape != real.image_shape:
        raise DataError(
            f"synthetic images are {'x'.join(map(str, synthetic.image_shape))} but the real "
            f"{real.name} images are {'x'.join(map(str, real.image_shape))}"
        )
    for role, dataset in (("synthetic", synthetic), ("real", real)):
        check_fid_sample_count(num_images=len(dataset), feature_dims=extractor.feature_dims, backbone=extractor.name,
                               role=role, allow_singular_covariance=allow_singular_covariance)

    real_mu, real_sigma, reference = reference_statistics(real=real, extractor=extractor, progress=progress)
    synthetic_mu, synthetic_sigma = feature_statistics(extractor.features(synthetic.images, progress=progress))
    distance = pytorch_fid_distance(synthetic_mu, synthetic_sigma, real_mu, real_sigma)
    unscaled = {}
    if getattr(extractor, "standardisation", None) is not None:
        # The same features on the raw scale, so that a table's order can be checked against it.
        scale = extractor.standardisation
        unscaled["fid_unscaled"] = float(pytorch_fid_distance(
            *unstandardised_statistics(synthetic_mu, synthetic_sigma, scale),
            *unstandardised_statistics(real_mu, real_sigma, scale)))
    return {
        "fid": float(distance),
        "fid_backbone": extractor.name,
        # How the features were scaled: FIDs compare only under one backbone and one scale.
        "fid_scale": extractor.scale,
        # Name, settings and weights digest of the feature network.
        "fid_backbone_identity": extractor.identity,
        "fid_feature_dims": int(extractor.feature_dims),
        "fid_num_synthetic": len(synthetic),
        "fid_num_real": len(real),
        "fid_reference": f"{reference['dataset']} (reporting only)",
        **unscaled,
    }
