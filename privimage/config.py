"""Configuration: frozen dataclasses, one YAML file per profile, strict loading.

A profile (``smoke``, ``quick``, ``paper``) is a YAML file in
``privimage/configs/`` whose nested mappings mirror the dataclasses below. Loading
is strict: an unknown key or a value of the wrong type is a `ConfigError` naming
the key and the file. Every field has a default, so a profile only states what
differs from it. The resolved config serialises to JSON (``to_dict``) and is saved
beside every artifact; stage caches hash exactly the section a stage depends on.

Each section owns one stage of the pipeline (DESIGN.md: config -> data ->
semantics/selection -> pretrain -> DP fine-tune -> sample -> evaluate).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from privimage.errors import ConfigError

PROFILE_DIR = Path(__file__).parent / "configs"
PROFILES = ("smoke", "quick", "paper")

# The paper's query noise multiplier z per sensitive dataset (Appendix A), which
# ``semantics.query_noise_multiplier: null`` stands for. On CIFAR-10 (5,000
# training images per class) z = 484 is a noise std of 9.7% of a class's votes.
PAPER_QUERY_NOISE_MULTIPLIERS = {"cifar10": 484.0, "celeba32": 5300.0, "celeba64": 5300.0}


@dataclass(frozen=True)
class DataConfig:
    """Which datasets play the sensitive and the public role (paper Section 4.1)."""

    sensitive: str = "mnist5k"
    public: str = "glyphs1k"
    # Glyphs-1k size: images rendered per class for the train and val splits.
    glyphs_train_per_class: int = 64
    glyphs_val_per_class: int = 8
    # Seed of the Glyphs-1k rendering. It never controls DP noise.
    dataset_seed: int = 0
    # CelebA has attributes, not classes: "" gives one class ("face"); an
    # attribute name (e.g. "Male") gives two, "not male" and "male".
    celeba_attribute: str = ""


@dataclass(frozen=True)
class SemanticQueryConfig:
    """Semantic query function and the noisy semantic distribution (Sections 3.2-3.3)."""

    # ResNet of the semantic query function (SQF): "resnet50" or a scaled ResNet.
    sqf_arch: str = "resnet_small"
    sqf_width: int = 32
    sqf_blocks: tuple[int, ...] = (1, 1, 1)
    sqf_epochs: int = 6
    sqf_batch_size: int = 256
    sqf_lr: float = 0.1
    # Training-time augmentation of the public images: "shift" moves each batch
    # by up to 2 px; "affine" also rotates, scales, slants and thickens or thins
    # each image's strokes (`privimage.semantics.query_function.SQF_AUGMENTATIONS`).
    sqf_augmentation: str = "shift"
    # Seed of the SQF's initialisation and shuffling (public data only). Separate
    # from the run seed: like the paper's one ImageNet classifier, a single SQF
    # serves every run and seed (and is trained once, then cached).
    sqf_seed: int = 0
    # k: semantics taken per sensitive image (paper Theorem 3.1, sensitivity sqrt(k)).
    # None: k = N, the semantics each class selects (paper Appendix A, "we set k = N").
    k: int | None = None
    # Fraction of the public dataset selected for pre-training (Table 8 maps it to N):
    # the paper's main setting, 1% (N = 1 for 10 classes and 1,000 public classes).
    selection_ratio: float = 0.01
    # z: the query's noise std is z * sqrt(k). None: the paper's value for the
    # sensitive dataset (`PAPER_QUERY_NOISE_MULTIPLIERS`). 39 keeps the paper's
    # CIFAR-10 noise share of a class's votes on MNIST-5k (484 x 400 / 5000).
    query_noise_multiplier: float | None = 39.0


@dataclass(frozen=True)
class DiffusionModelConfig:
    """Class-conditional UNet (DPDM style, GroupNorm only; `privimage.models.build_unet`).

    ``preset`` names a size of `privimage.models.presets` whose shape replaces the
    four shape fields: "tiny" (smoke tests), the CIFAR-10 sweep "1.8M", "4.0M",
    "6.1M", "15.7M", "27.9M", PDP-Diffusion's "80M" (and "5.6M", its layout at the
    quick profile's width), and the MNIST sweep "1.75M",
    "6.99M", "27.9M", "62.7M", "112M", "251M". "custom" uses the fields below.
    """

    preset: str = "custom"
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    # Feature-map sizes (e.g. [16]) with self-attention; the lowest resolution always has it.
    attention_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    # EDM's data standard deviation in the denoiser's preconditioning and loss weight (`privimage.diffusion`).
    sigma_data: float = 0.5


@dataclass(frozen=True)
class GANModelConfig:
    """Class-conditional GAN (GroupNorm, DP on the discriminator only; `privimage.models.build_gan`).

    At 32x32, generator_width 128 and discriminator_width 60 give the sizes of
    the paper's Table 6 (9.5M and 2.4M parameters).
    """

    latent_dim: int = 64
    # Channels at the image resolution; doubled at each coarser level down to 4x4.
    generator_width: int = 64
    discriminator_width: int = 32
    # Discriminator updates per generator update (paper Table 6).
    update_ratio: int = 5


@dataclass(frozen=True)
class PretrainConfig:
    """Non-private pre-training on public data (Section 3.4; Tables 5-6).

    The step budget is fixed whatever the size of the public data, so methods
    that pre-train on all, a selected part, or none of it compare at equal cost.
    """

    # Diffusion: AdamW steps, batch size, learning rate (Table 5).
    steps: int = 2000
    batch_size: int = 64
    # Largest chunk run at once (gradients accumulate over chunks); 0: the whole batch.
    physical_batch_size: int = 0
    lr: float = 2e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    # Probability of dropping the label, for classifier-free guidance.
    label_dropout: float = 0.1
    # GAN: discriminator steps, batch size and learning rate of both networks (Table 6).
    gan_steps: int = 2000
    gan_batch_size: int = 64
    gan_lr: float = 2e-4
    # Steps between crash-safe checkpoints (a killed run resumes from the latest).
    checkpoint_every: int = 500


@dataclass(frozen=True)
class FinetuneConfig:
    """DP-SGD fine-tuning on the sensitive data (Algorithm 1, Appendix E; Tables 5-6)."""

    delta: float = 1e-5
    # Expected (logical) batch size of Poisson sampling; physical batches fit memory.
    batch_size: int = 256
    physical_batch_size: int = 64
    # Passes over the sensitive data: steps = ceil(epochs / q) with q = batch_size / N.
    epochs: float = 20.0
    lr: float = 3e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # K: diffusion noise draws averaged per image before clipping.
    noise_multiplicity: int = 4
    # Draws of each image run at once in a DP step, their per-image gradients summed before
    # clipping (same gradient, activation memory of B*chunk rows instead of B*K); 0: all K.
    # 1 measured best: benchmarks/README.md, "Noise multiplicity in chunks".
    multiplicity_chunk: int = 1
    ema_decay: float = 0.999
    # Probability of dropping the label, for classifier-free guidance (as in pre-training).
    label_dropout: float = 0.1
    # GAN: epochs of discriminator DP-SGD steps and the learning rate of both networks (Table 6).
    gan_epochs: float = 10.0
    gan_lr: float = 2e-4
    # Draw DP noise with opacus's floating-point-attack mitigation (slower).
    secure_mode: bool = False
    # Logical steps between crash-safe checkpoints (each one also saves the ledger).
    checkpoint_every: int = 20


@dataclass(frozen=True)
class SamplingConfig:
    """DDIM sampling of the synthetic dataset."""

    ddim_steps: int = 50
    guidance_scale: float = 0.0
    num_samples: int = 5000
    batch_size: int = 500


@dataclass(frozen=True)
class EvaluationConfig:
    """FID, downstream classifiers and t-SNE (Section 4.3, Fig. 4)."""

    # FID feature network: "auto" (Inception when its weights file is found, else
    # offline), "inception" (error without weights) or "offline".
    fid_backbone: str = "auto"
    # Path of pytorch-fid's Inception weights; empty: $PRIVIMAGE_INCEPTION_WEIGHTS, then the torch hub cache.
    inception_weights: str = ""
    # Inception block: 2048 (pool3, the standard FID), 768, 192 or 64.
    fid_inception_dims: int = 2048
    fid_batch_size: int = 200
    # FID needs more images than feature dimensions for a full-rank covariance;
    # true lets pytorch-fid regularise a singular one instead of refusing.
    fid_allow_singular_covariance: bool = False
    # Offline backbone: a SmallCNN trained once on the public training split.
    fid_backbone_width: int = 32
    fid_backbone_embedding_dim: int = 128
    fid_backbone_epochs: int = 3
    # Scale of the offline features, from public data only: "public-common" (one
    # common public std for all features: every FID is the raw one divided by the
    # same constant, so every ordering of methods is kept exactly), or
    # "public-standardised" (per-feature mean and std: on fixed features it
    # swapped two sets whose raw FIDs were within 30%, so not the default), or
    # "raw" (unnormalised, FIDs in the thousands). Inception is never rescaled.
    fid_offline_scale: str = "public-common"
    # Downstream classifiers, trained on the synthetic set.
    lr_inverse_regularization: tuple[float, ...] = (0.01, 0.1, 1.0)
    lr_max_iter: int = 500
    mlp_hidden_sizes: tuple[int, ...] = (256,)
    mlp_max_iter: int = 200
    mlp_patience: int = 10
    cnn_width: int = 32
    cnn_embedding_dim: int = 128
    cnn_epochs: int = 10
    cnn_batch_size: int = 128
    cnn_lr: float = 1e-3
    # Fraction of the synthetic set held out for model selection (never the test split).
    synthetic_validation_fraction: float = 0.1
    tsne_perplexity: float = 30.0


@dataclass(frozen=True)
class ExperimentConfig:
    """The grids the research-question notebooks sweep (`privimage.experiments`).

    Not part of any run: a run's folder and cache keys ignore this section, so
    two notebooks that ask for the same run share it.
    """

    # RQ1 (Table 2, Fig. 4-5): every method at every budget, averaged over seeds.
    methods: tuple[str, ...] = (
        "privimage-d", "privimage-g", "pdp-diffusion", "dpdm", "dpgan", "dpgan-p",
    )
    epsilons: tuple[float, ...] = (1.0, 5.0, 10.0)
    seeds: tuple[int, ...] = (0, 1)
    # Seeds of the one-setting sweeps (RQ2-RQ3, Tables 3-4, Fig. 8); a profile
    # short of compute may average fewer seeds there than in Table 2.
    sweep_seeds: tuple[int, ...] = (0, 1)
    # The budget of the one-epsilon experiments (RQ2-RQ3, Tables 3-4, Fig. 8); the paper uses 10.
    sweep_epsilon: float = 10.0
    # RQ2 (Fig. 6 left): generators sampled straight after pre-training.
    pretrained_methods: tuple[str, ...] = ("privimage-d", "pdp-diffusion", "privimage-g", "dpgan-p")
    # RQ2-RQ3 (Fig. 6 right, Fig. 7): selection ratios of the public data (1.0: all of it).
    selection_ratios: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.5, 1.0)
    # RQ3 (Fig. 7): diffusion size presets of Privimage+D (`privimage.models.presets`).
    model_sizes: tuple[str, ...] = ("1.8M", "4.0M", "6.1M")
    # Table 3: non-private ablations beside Privimage (the NonPriv classifier row is always added).
    nonprivate_methods: tuple[str, ...] = ("nonpriv-g", "nonpriv-d", "privimage-g", "privimage-d")
    # Table 4 (Section 6.2): diffusion presets of Privimage+D and PDP-Diffusion, in the paper's
    # 6.1M : 80M ratio ("": the profile's diffusion.preset), each pre-trained for the paper's
    # epochs over its own pre-training set (`privimage.evaluation.resource_comparison`).
    resource_privimage_preset: str = ""
    resource_pdp_preset: str = ""
    # Privimage's pre-training set in Table 4: the paper's CIFAR-10 selection, 1% (DESIGN.md).
    resource_selection_ratio: float = 0.01
    # "measured": run every stage in full (GPUs); "projected": time a few steps of each stage
    # after warm-up and scale them to the full schedule (a CPU, where the full stages take days).
    resource_mode: str = "projected"
    # Projected mode: untimed and timed steps per stage, and the most rows (images x K) a timed step runs.
    resource_warmup_steps: int = 1
    resource_timed_steps: int = 2
    resource_timing_rows: int = 64
    # Fig. 8 (Appendix B): DP-SGD-only diffusion of growing size on MNIST.
    overparameterization_method: str = "dpdm"
    overparameterization_dataset: str = "mnist5k"
    overparameterization_sizes: tuple[str, ...] = ("1.75M", "6.99M")


@dataclass(frozen=True)
class Config:
    """A whole resolved profile."""

    profile: str = "quick"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    semantics: SemanticQueryConfig = field(default_factory=SemanticQueryConfig)
    diffusion: DiffusionModelConfig = field(default_factory=DiffusionModelConfig)
    gan: GANModelConfig = field(default_factory=GANModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable nested dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


# --------------------------------------------------------------------------- loading


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation)


def _coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Check ``value`` against a field annotation; return it in the field's type."""
    origin = typing.get_origin(annotation)
    # tuple[X, ...]: YAML gives a list.
    if origin is tuple:
        (item_type, *_rest) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: key '{key}' must be a list, got {type(value).__name__} {value!r}")
        return tuple(_coerce(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: key '{key}' must be a mapping, got {value!r}")
        return _build(annotation, value, source, prefix=f"{key}.")
    # bool is an int subclass in Python; refuse it where a number is expected, and vice versa.
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: key '{key}' must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: key '{key}' must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: key '{key}' must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: key '{key}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: key '{key}' has unsupported type {_type_name(annotation)}")


def _build(cls: type, mapping: Mapping[str, Any], source: str, prefix: str = "", base: Any = None) -> Any:
    """Instantiate dataclass ``cls`` from ``mapping`` over ``base`` (or the defaults)."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in mapping:
        if key not in known:
            raise ConfigError(f"{source}: unknown key '{prefix}{key}' (known: {', '.join(sorted(known))})")
    base = base if base is not None else cls()
    updates = {}
    for key, value in mapping.items():
        annotation = hints[key]
        if is_dataclass(annotation):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: key '{prefix}{key}' must be a mapping, got {value!r}")
            updates[key] = _build(annotation, value, source, prefix=f"{prefix}{key}.", base=getattr(base, key))
        else:
            updates[key] = _coerce(value, annotation, f"{prefix}{key}", source)
    return replace(base, **updates)


def _dotted_to_nested(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """{"finetune.epsilon": 1} -> {"finetune": {"epsilon": 1}}; nested dicts pass through."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"overrides: key '{key}' conflicts with another override")
        if isinstance(value, Mapping) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(value)
        else:
            node[parts[-1]] = dict(value) if isinstance(value, Mapping) else value
    return nested


# Value ranges, checked once a config is resolved so that a nonsensical setting
# is refused before any data is loaded or any budget is spent. (key, test, what it must be)
_POSITIVE = (lambda v: v > 0, "be > 0")
_NON_NEGATIVE = (lambda v: v >= 0, "be >= 0")
_FRACTION_OPEN_CLOSED = (lambda v: 0 < v <= 1, "lie in (0, 1]")
_PROBABILITY = (lambda v: 0 <= v < 1, "lie in [0, 1)")
VALUE_RULES: tuple[tuple[str, Any, str], ...] = (
    ("semantics.k", lambda v: v is None or v >= 1, "be >= 1 (or null: k = N)"),
    ("semantics.selection_ratio", *_FRACTION_OPEN_CLOSED),
    ("semantics.query_noise_multiplier", lambda v: v is None or v > 0,
     "be > 0 (or null: the paper's value for the sensitive dataset)"),
    ("semantics.sqf_width", *_POSITIVE),
    ("semantics.sqf_epochs", *_POSITIVE),
    ("semantics.sqf_batch_size", *_POSITIVE),
    ("semantics.sqf_augmentation", lambda v: v in ("shift", "affine"), "be 'shift' or 'affine'"),
    ("diffusion.sigma_data", *_POSITIVE),
    ("pretrain.steps", *_NON_NEGATIVE),
    ("pretrain.gan_steps", *_NON_NEGATIVE),
    ("pretrain.batch_size", *_POSITIVE),
    ("pretrain.physical_batch_size", *_NON_NEGATIVE),
    ("pretrain.label_dropout", *_PROBABILITY),
    ("pretrain.checkpoint_every", *_POSITIVE),
    ("finetune.delta", lambda v: 0 < v < 1, "lie in (0, 1)"),
    ("finetune.batch_size", *_POSITIVE),
    ("finetune.physical_batch_size", *_POSITIVE),
    ("finetune.epochs", *_POSITIVE),
    ("finetune.gan_epochs", *_POSITIVE),
    ("finetune.max_grad_norm", *_POSITIVE),
    ("finetune.noise_multiplicity", *_POSITIVE),
    ("finetune.multiplicity_chunk", *_NON_NEGATIVE),
    ("finetune.label_dropout", *_PROBABILITY),
    ("finetune.checkpoint_every", *_POSITIVE),
    ("sampling.ddim_steps", *_POSITIVE),
    ("sampling.num_samples", *_POSITIVE),
    ("sampling.batch_size", *_POSITIVE),
    ("sampling.guidance_scale", *_NON_NEGATIVE),
    ("evaluation.synthetic_validation_fraction", lambda v: 0 < v < 1, "lie in (0, 1)"),
    ("evaluation.fid_offline_scale", lambda v: v in ("public-standardised", "public-common", "raw"),
     "be 'public-standardised', 'public-common' or 'raw'"),
    ("experiment.epsilons", lambda v: all(e > 0 for e in v), "hold only values > 0"),
    ("experiment.sweep_epsilon", *_POSITIVE),
    ("experiment.selection_ratios", lambda v: all(0 < r <= 1 for r in v), "hold only values in (0, 1]"),
    ("experiment.resource_selection_ratio", *_FRACTION_OPEN_CLOSED),
    ("experiment.resource_mode", lambda v: v in ("measured", "projected"), "be 'measured' or 'projected'"),
    ("experiment.resource_warmup_steps", *_NON_NEGATIVE),
    ("experiment.resource_timed_steps", *_POSITIVE),
    ("experiment.resource_timing_rows", *_POSITIVE),
)


def query_noise_multiplier(config: Config) -> float:
    """z of the semantic query: the config's, or the paper's for its sensitive dataset when it says null.

    Args:
        config: the resolved config.

    Returns:
        z; the query's noise std is z * sqrt(k) (paper Theorem 3.1).

    Raises:
        ConfigError: null for a sensitive dataset the paper gives no z for.
    """
    z = config.semantics.query_noise_multiplier
    if z is not None:
        return z
    sensitive = config.data.sensitive
    if sensitive not in PAPER_QUERY_NOISE_MULTIPLIERS:
        known = ", ".join(f"{name} {value:g}" for name, value in PAPER_QUERY_NOISE_MULTIPLIERS.items())
        raise ConfigError(f"semantics.query_noise_multiplier is null (the paper's value), but the paper gives none "
                          f"for '{sensitive}' (only {known}): set a number")
    return PAPER_QUERY_NOISE_MULTIPLIERS[sensitive]


def check_values(config: Config, source: str) -> Config:
    """Refuse out-of-range settings (`VALUE_RULES`) with an error naming the key and the source."""
    for key, is_valid, requirement in VALUE_RULES:
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part)
        if not is_valid(value):
            raise ConfigError(f"{source}: {key} must {requirement}, got {value!r}")
    return config


def profile_path(profile: str) -> Path:
    """The YAML file of a named profile, or the path itself if it names a file."""
    candidate = Path(profile)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ConfigError(f"profile file not found: {candidate}")
        return candidate
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile '{profile}' (choose from {', '.join(PROFILES)} or a .yaml path)")
    return PROFILE_DIR / f"{profile}.yaml"


def load_config(profile: str = "quick", overrides: Mapping[str, Any] | None = None) -> Config:
    """Resolve a profile and optional overrides into a frozen `Config`.

    Args:
        profile: ``smoke``, ``quick``, ``paper``, or a path to a YAML file.
        overrides: dotted keys (``{"finetune.epochs": 2}``) or nested mappings,
            applied after the profile file, checked with the same strictness.

    Returns:
        The resolved `Config`.

    Raises:
        ConfigError: unknown key, wrong type, out-of-range value (`VALUE_RULES`), unreadable file.
    """
    path = profile_path(profile)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: top level must be a mapping")
    raw = dict(raw)
    raw.setdefault("profile", path.stem)
    config = check_values(_build(Config, raw, str(path)), str(path))
    if overrides:
        config = check_values(_build(Config, _dotted_to_nested(overrides), "overrides", base=config), "overrides")
    return config


def config_from_dict(mapping: Mapping[str, Any], source: str = "config.json") -> Config:
    """Rebuild a `Config` from its ``to_dict`` form (a saved ``config.json``)."""
    return check_values(_build(Config, mapping, source), source)


# Fine-tuning settings that bound memory and give the same result (to float rounding):
# a run, its cache folder and its checkpoints are the same whatever their values.
COST_ONLY_FINETUNE_KEYS = ("multiplicity_chunk",)


def without_cost_only_settings(finetune: Mapping[str, Any]) -> dict[str, Any]:
    """A ``finetune`` section as a dict, without `COST_ONLY_FINETUNE_KEYS` (for run and checkpoint identities)."""
    return {key: value for key, value in finetune.items() if key not in COST_ONLY_FINETUNE_KEYS}


def run_identity(config: Config) -> dict[str, Any]:
    """What one run depends on: the whole config but the experiment grid section and cost-only settings.

    The one definition of a run's identity: its folder name, the ledger's config
    hash, the check that a folder belongs to a config, and the caches of stages
    derived from one run all hash this.
    """
    identity = config.to_dict()
    identity.pop("experiment", None)
    # Memory bounds that give the same per-sample gradients (to float rounding): runs stay cached across them.
    identity["finetune"] = without_cost_only_settings(identity["finetune"])
    return identity


def config_hash(section: Any) -> str:
    """Content hash of a config section (or any JSON-able object), for stage caches."""
    if is_dataclass(section):
        section = dataclasses.asdict(section)
    payload = json.dumps(section, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:16]
