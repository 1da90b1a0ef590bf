"""FID: pytorch-fid's distance on the offline public-data backbone or on Inception (paper Section 4.3)."""

import json

import numpy as np
import pytest
import torch
import torchvision

from privimage.cache import cache_root
from privimage.config import load_config
from privimage.data.base import ImageDataset
from privimage.data.mnist5k import load_mnist5k
from privimage.errors import ConfigError, DataError
from privimage.evaluation import backbone as backbone_module
from privimage.evaluation.fid import (
    INCEPTION_WEIGHTS_FILE,
    InceptionFeatures,
    OfflineFeatures,
    check_fid_sample_count,
    choose_backbone,
    find_inception_weights,
    frechet_distance,
    load_fid_backbone,
    public_feature_standardisation,
    pytorch_fid_distance,
    reference_statistics,
)
from stand_ins import stand_in_public

torch.set_num_threads(2)


pytestmark = pytest.mark.usefixtures("module_cache")



@pytest.fixture(scope="module")
def offline():
    """The offline backbone with per-feature public standardisation (the scale whose guarantees are weakest)."""
    train, validation = stand_in_public()
    config = load_config("smoke", {"evaluation.fid_backbone_epochs": 3,
                                   "evaluation.fid_offline_scale": "public-standardised"})
    return load_fid_backbone(config=config, public_train=train, public_validation=validation)


@pytest.fixture(scope="module")
def offline_default():
    """The offline backbone on the profile's default scale (one common public std)."""
    train, validation = stand_in_public()
    config = load_config("smoke", {"evaluation.fid_backbone_epochs": 3})
    assert config.evaluation.fid_offline_scale == "public-common"
    return load_fid_backbone(config=config, public_train=train, public_validation=validation)


@pytest.fixture(scope="module")
def mnist_test():
    return load_mnist5k("test")


def with_noise(dataset, std, seed=0):
    noisy = dataset.images + np.random.default_rng(seed).normal(0.0, std, dataset.images.shape)
    return ImageDataset("noisy", "synthetic", np.clip(np.rint(noisy), 0, 255).astype(np.uint8), dataset.labels,
                        dataset.class_names)


def test_offline_backbone_is_labelled_and_learnt_its_public_task(offline):
    assert isinstance(offline, OfflineFeatures)
    assert offline.name == "offline-smallcnn-sklearn-digits"
    assert offline.feature_dims == 128
    assert offline.scale == "standardised on public sklearn-digits/val"
    # A backbone that learnt nothing would give meaningless features.
    assert offline.meta["public_validation_accuracy"] > 0.7


def test_fid_of_a_set_against_itself_is_zero(offline, mnist_test):
    result = frechet_distance(synthetic=mnist_test, real=mnist_test, extractor=offline)
    assert abs(result["fid"]) < 1e-6
    assert result["fid_backbone"] == offline.name
    # The metric names the exact weights it was measured with.
    assert offline.meta["weights_sha256"] in result["fid_backbone_identity"]
    assert result["fid_scale"] == "standardised on public sklearn-digits/val"
    assert len(offline.meta["weights_sha256"]) == 16
    assert result["fid_num_synthetic"] == result["fid_num_real"] == 1000
    assert "reporting only" in result["fid_reference"]


def test_fid_grows_monotonically_with_noise(offline, mnist_test):
    stds = [0, 8, 16, 32, 64, 128]
    fids = [frechet_distance(synthetic=with_noise(mnist_test, std), real=mnist_test, extractor=offline)["fid"]
            for std in stds]
    assert all(later > earlier for earlier, later in zip(fids, fids[1:])), fids
    # Held-out real digits are closer to the test split than heavily corrupted copies of it.
    train_fid = frechet_distance(synthetic=load_mnist5k("train"), real=mnist_test, extractor=offline)["fid"]
    assert train_fid < fids[-2]


def test_backbone_and_reference_statistics_are_cached(offline, mnist_test, monkeypatch):
    train, validation = stand_in_public()
    # A second request must load the cached instrument, not train again.
    monkeypatch.setattr(backbone_module, "fit_cnn", lambda **_: pytest.fail("backbone retrained"))
    again = load_fid_backbone(config=load_config("smoke", {"evaluation.fid_backbone_epochs": 3,
                                                           "evaluation.fid_offline_scale": "public-standardised"}),
                              public_train=train, public_validation=validation)
    images = mnist_test.images[:50]
    np.testing.assert_allclose(again.features(images), offline.features(images))

    mu, sigma, meta = reference_statistics(real=mnist_test, extractor=offline)
    assert meta["use"].startswith("reporting only") and meta["num_images"] == 1000
    assert sigma.shape == (128, 128) and meta["scale"] == offline.scale
    # The cached statistics are what the features give.
    features = offline.features(mnist_test.images).astype(np.float64)
    np.testing.assert_allclose(mu, features.mean(axis=0), rtol=1e-6, atol=1e-8)
    assert len(list((cache_root() / "fid_reference").iterdir())) >= 1


def test_backbone_refuses_sensitive_data():
    train, validation = stand_in_public()
    sensitive = ImageDataset(train.name, "train", train.images, train.labels, train.class_names, sensitive=True)
    with pytest.raises(DataError, match="must not read the sensitive training set"):
        load_fid_backbone(config=load_config("smoke"), public_train=sensitive, public_validation=validation)


def test_reference_statistics_refuse_the_sensitive_training_split(offline):
    train = load_mnist5k("train")
    flagged = ImageDataset(train.name, train.split, train.images, train.labels, train.class_names, sensitive=True)
    with pytest.raises(DataError, match="reporting only"):
        reference_statistics(real=flagged, extractor=offline)


def test_too_few_samples_says_how_many_are_needed(offline, mnist_test):
    small = mnist_test.subset(np.arange(100))
    with pytest.raises(DataError, match=r"needs at least 129 synthetic images .*got 100"):
        frechet_distance(synthetic=small, real=mnist_test, extractor=offline)
    with pytest.raises(DataError, match=r"at least 2049 real images"):
        check_fid_sample_count(num_images=1000, feature_dims=2048, backbone="inception", role="real",
                               allow_singular_covariance=False)
    check_fid_sample_count(num_images=100, feature_dims=2048, backbone="inception", role="real",
                           allow_singular_covariance=True)


def test_shape_mismatch_is_refused(offline, mnist_test):
    rgb = ImageDataset("rgb", "synthetic", np.zeros((200, 3, 32, 32), np.uint8), np.zeros(200, np.int64), ("a",))
    with pytest.raises(DataError, match="3x32x32 but the real mnist5k images are 1x32x32"):
        frechet_distance(synthetic=rgb, real=mnist_test, extractor=offline)


def test_offline_backbone_adapts_channels_and_size_the_same_way_for_every_set(offline):
    # RGB 64x64 inputs reach the 1x32x32 backbone through one deterministic path.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 3, 64, 64), dtype=np.uint8)
    features = offline.features(images)
    assert features.shape == (4, 128) and np.isfinite(features).all()
    np.testing.assert_array_equal(features, offline.features(images))


# --------------------------------------------------------------------------- Inception path


def write_random_fid_inception(path):
    """pytorch-fid's FID-Inception architecture with random weights, as a local state dict."""
    from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    state = net.state_dict()
    torch.save(state, path)
    return state


def test_inception_path_uses_the_local_weights_and_is_labelled_inception(tmp_path, monkeypatch):
    import pytorch_fid.inception as fid_inception

    weights = tmp_path / "inception.pth"
    state = write_random_fid_inception(weights)
    # The network must never try to download.
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    config = load_config("smoke", {
        "evaluation.fid_backbone": "auto",
        "evaluation.inception_weights": str(weights),
        "evaluation.fid_inception_dims": 64,
        "evaluation.fid_allow_singular_covariance": True,
    })
    extractor = load_fid_backbone(config=config)
    assert isinstance(extractor, InceptionFeatures) and extractor.name == "inception"
    # The loader swap is undone after building.
    assert fid_inception.load_state_dict_from_url is not None
    assert "load_local" not in fid_inception.load_state_dict_from_url.__name__

    rng = np.random.default_rng(0)
    real = ImageDataset("real", "test", rng.integers(0, 256, (8, 1, 16, 16), dtype=np.uint8), np.arange(8) % 2, ("a", "b"))
    synthetic = ImageDataset("syn", "synthetic", rng.integers(0, 256, (6, 1, 16, 16), dtype=np.uint8),
                             np.arange(6) % 2, ("a", "b"))

    # The same features as pytorch-fid's own InceptionV3 given the same state dict (grayscale -> RGB in [0, 1]).
    monkeypatch.setattr(fid_inception, "load_state_dict_from_url", lambda *a, **k: state)
    reference = fid_inception.InceptionV3([0]).eval()
    with torch.no_grad():
        expected = reference(torch.from_numpy(real.images).float().div(255).repeat(1, 3, 1, 1))[0]
        expected = torch.nn.functional.adaptive_avg_pool2d(expected, 1).flatten(1).double().numpy()
    np.testing.assert_allclose(extractor.features(real.images), expected, rtol=1e-4, atol=1e-5)

    result = frechet_distance(synthetic=synthetic, real=real, extractor=extractor, allow_singular_covariance=True)
    assert result["fid_backbone"] == "inception" and result["fid_feature_dims"] == 64
    assert (result["fid_num_synthetic"], result["fid_num_real"]) == (6, 8)
    assert np.isfinite(result["fid"]) and result["fid"] > 0


def test_not_a_state_dict_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    config = load_config("smoke", {"evaluation.fid_backbone": "inception", "evaluation.inception_weights": str(bad),
                                   "evaluation.fid_inception_dims": 64})
    with pytest.raises(DataError, match="not a pytorch-fid Inception state dict"):
        load_fid_backbone(config=config)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    config = load_config("smoke", {"evaluation.fid_backbone": "inception", "evaluation.inception_weights": str(garbage)})
    with pytest.raises(DataError, match="not a readable PyTorch weights file"):
        load_fid_backbone(config=config)


def test_weights_are_found_in_config_env_then_hub_cache(tmp_path, monkeypatch):
    config = load_config("smoke").evaluation
    monkeypatch.delenv("PRIVIMAGE_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert find_inception_weights(config=config) is None
    assert choose_backbone(config=load_config("quick", {"evaluation.fid_backbone": "auto"}).evaluation,
                           public_name="glyphs1k").name == "offline-smallcnn-glyphs1k"

    hub_file = tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE
    hub_file.parent.mkdir(parents=True)
    hub_file.write_bytes(b"x")
    assert find_inception_weights(config=config) == hub_file
    env_file = tmp_path / "env.pth"
    env_file.write_bytes(b"x")
    monkeypatch.setenv("PRIVIMAGE_INCEPTION_WEIGHTS", str(env_file))
    assert find_inception_weights(config=config) == env_file
    auto = load_config("quick", {"evaluation.fid_backbone": "auto"}).evaluation
    assert choose_backbone(config=auto, public_name="glyphs1k").name == "inception"
    # The offline choice ignores any weights present.
    assert choose_backbone(config=load_config("quick").evaluation, public_name="glyphs1k").kind == "offline"


def test_missing_named_weights_are_errors_not_silent_fallbacks(tmp_path, monkeypatch):
    missing = load_config("smoke", {"evaluation.inception_weights": str(tmp_path / "nope.pth"),
                                    "evaluation.fid_backbone": "auto"}).evaluation
    with pytest.raises(ConfigError, match="inception_weights: file not found"):
        choose_backbone(config=missing, public_name="glyphs1k")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("PRIVIMAGE_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(DataError, match="--download-inception"):
        choose_backbone(config=load_config("paper").evaluation, public_name="imagenet32")
    with pytest.raises(ConfigError, match="fid_backbone must be one of"):
        choose_backbone(config=load_config("smoke", {"evaluation.fid_backbone": "vgg"}).evaluation, public_name="x")


def test_cached_backbone_metadata_names_its_public_data(offline):
    folders = list((cache_root() / "fid_backbone").iterdir())
    metas = [json.loads((folder / "meta.json").read_text()) for folder in folders]
    assert any(meta["public_dataset"] == "sklearn-digits/train" for meta in metas)


# --------------------------------------------------------------------------- the public-standardised scale


@pytest.fixture(scope="module")
def offline_raw(offline):
    """The same cached backbone on its raw (unnormalised) scale."""
    train, validation = stand_in_public()
    config = load_config("smoke", {"evaluation.fid_backbone_epochs": 3, "evaluation.fid_offline_scale": "raw"})
    return load_fid_backbone(config=config, public_train=train, public_validation=validation)


@pytest.fixture(scope="module")
def fixed_sets(mnist_test):
    """Sets like the rows of a result table, from near-real to far, all fixed by seed (no training)."""
    rng = np.random.default_rng(0)
    order = rng.permutation(len(mnist_test))
    half_a, half_b = mnist_test.subset(order[:500], "test-a"), mnist_test.subset(order[500:], "test-b")

    def named(name, images):
        return ImageDataset(name, "synthetic", images, half_a.labels[:len(images)], half_a.class_names)

    uniform = rng.integers(0, 256, half_a.images.shape, dtype=np.uint8)
    public_digits = stand_in_public()[0].images[:500]
    mixtures = {f"{int(100 * share)}% uniform": np.where(np.arange(500)[:, None, None, None] < 500 * share,
                                                         uniform, half_a.images) for share in (0.1, 0.3, 0.6)}
    sets = {"real half": half_a,
            **{f"noise {std}": with_noise(half_a, std) for std in (16, 48, 96, 160)},
            **{name: named(name, images) for name, images in mixtures.items()},
            "one class": named("one class", np.repeat(half_a.images[half_a.labels == 1][:50], 10, axis=0)),
            "inverted": named("inverted", 255 - half_a.images),
            "public digits": named("public digits", public_digits),
            "uniform": named("uniform", uniform)}
    return half_b, sets


def test_standardisation_comes_from_the_public_validation_split_and_is_cached(offline, offline_raw):
    _, validation = stand_in_public()
    standardised = offline.features(validation.images)
    # On the public split that set the scale, every feature has mean 0 and std 1.
    np.testing.assert_allclose(standardised.mean(axis=0), 0.0, atol=1e-8)
    np.testing.assert_allclose(standardised.std(axis=0, ddof=1), 1.0, rtol=1e-8)
    # The standardised features are an exact per-feature affine map of the raw ones.
    images = validation.images[:20]
    np.testing.assert_allclose(offline.features(images) * offline.standardisation.std + offline.standardisation.mean,
                               offline_raw.features(images), rtol=1e-9, atol=1e-9)
    assert offline_raw.scale.startswith("unscaled") and offline_raw.identity != offline.identity
    metas = [json.loads(path.read_text()) for path in (cache_root() / "fid_feature_scale").glob("*/meta.json")]
    assert [meta["dataset"] for meta in metas] == ["sklearn-digits/val"]
    assert metas[0]["use"].startswith("public data only")


def test_standardisation_refuses_sensitive_data(offline_raw):
    train = load_mnist5k("train")
    flagged = ImageDataset(train.name, train.split, train.images, train.labels, train.class_names, sensitive=True)
    with pytest.raises(DataError, match="must not read the sensitive training set"):
        public_feature_standardisation(extractor=offline_raw, public=flagged)
    # Not the sensitive dataset's test split either: the public name must differ from the sensitive one.
    test = load_mnist5k("test")
    with pytest.raises(DataError, match="reads public data only"):
        load_fid_backbone(config=load_config("smoke", {"evaluation.fid_backbone_epochs": 3}),
                          public_train=stand_in_public()[0], public_validation=test)


@pytest.mark.filterwarnings("ignore:.*`disp` argument is deprecated")
@pytest.mark.parametrize("scale", ["offline", "offline_default"])
def test_new_scale_real_halves_near_zero_and_uniform_noise_far_above(request, scale, fixed_sets):
    half_b, sets = fixed_sets
    extractor = request.getfixturevalue(scale)
    fid = {name: frechet_distance(synthetic=sets[name], real=half_b, extractor=extractor)["fid"]
           for name in ("real half", "uniform")}
    # Two disjoint halves of the test split: only the finite-sample bias of 500 vs 500 images.
    assert 0 < fid["real half"] < 10, fid
    assert fid["uniform"] > 100 and fid["uniform"] > 30 * fid["real half"], fid


@pytest.mark.filterwarnings("ignore:.*`disp` argument is deprecated")
def test_rescaling_keeps_the_order_of_a_table_of_fixed_sets(offline, offline_raw, fixed_sets):
    half_b, sets = fixed_sets
    # One pass of fixed features gives both columns: the FID and the same pair on the raw scale.
    results = {name: frechet_distance(synthetic=dataset, real=half_b, extractor=offline) for name, dataset in sets.items()}
    standardised = {name: result["fid"] for name, result in results.items()}
    raw = {name: result["fid_unscaled"] for name, result in results.items()}
    assert raw["uniform"] == pytest.approx(
        frechet_distance(synthetic=sets["uniform"], real=half_b, extractor=offline_raw)["fid"], rel=1e-6)

    # A ladder of one kind of damage, as methods of one family at growing budgets, keeps its order.
    for ladder in (["real half", "noise 16", "noise 48", "noise 96", "noise 160"],
                   ["real half", "10% uniform", "30% uniform", "60% uniform", "uniform"]):
        assert sorted(ladder, key=raw.get) == ladder and sorted(ladder, key=standardised.get) == ladder, (raw, standardised)
    # Across kinds of damage, pairs whose raw FIDs differ by more than half keep their order; closer pairs of
    # different kinds can swap (measured here: "one class" and "30% uniform", raw 82 vs 63, swap).
    for first in sets:
        for second in sets:
            if raw[first] > 1.5 * raw[second]:
                assert standardised[first] > standardised[second], (first, second, raw, standardised)
    # What holds for every pair (module docstring of privimage.evaluation.fid): the W2 bound.
    std = offline.standardisation.std
    for name in sets:
        assert raw[name] / std.max() ** 2 <= standardised[name] * (1 + 1e-6) + 1e-6
        assert standardised[name] <= raw[name] / std.min() ** 2 * (1 + 1e-6) + 1e-6


def test_a_common_factor_keeps_every_order_but_a_per_feature_scale_need_not():
    identity = np.eye(2)
    reference = np.zeros(2)
    far_in_first, far_in_second = np.array([2.0, 0.0]), np.array([0.0, 1.0])

    def fid(mu, scale):
        scale = np.asarray(scale)
        # The same per-feature scale on both sets, as the standardisation applies it.
        covariance = identity * np.outer(scale, scale)
        return pytorch_fid_distance(mu * scale, covariance, reference * scale, covariance)

    assert fid(far_in_first, [1, 1]) == pytest.approx(4.0) and fid(far_in_second, [1, 1]) == pytest.approx(1.0)
    # A common factor c multiplies every FID by c^2.
    assert fid(far_in_first, [3, 3]) == pytest.approx(36.0) and fid(far_in_second, [3, 3]) == pytest.approx(9.0)
    # Dividing the second feature by a public std of 0.1 swaps the two pairs (why the order is tested above).
    assert fid(far_in_first, [1, 10]) < fid(far_in_second, [1, 10])


def test_unknown_offline_scale_is_a_config_error():
    with pytest.raises(ConfigError, match="fid_offline_scale must be .public-standardised., .public-common. or .raw."):
        load_config("smoke", {"evaluation.fid_offline_scale": "zscore"})


@pytest.mark.filterwarnings("ignore:.*`disp` argument is deprecated")
def test_common_public_factor_divides_every_fid_by_one_constant(offline, offline_raw, fixed_sets):
    train, validation = stand_in_public()
    config = load_config("smoke", {"evaluation.fid_backbone_epochs": 3, "evaluation.fid_offline_scale": "public-common"})
    common = load_fid_backbone(config=config, public_train=train, public_validation=validation)
    assert common.scale == "divided by one common std of public sklearn-digits/val"
    # The factor is the root mean public variance of the per-feature statistics.
    factor = np.mean(offline.standardisation.std ** 2)
    half_b, sets = fixed_sets
    results = {name: frechet_distance(synthetic=sets[name], real=half_b, extractor=common)
               for name in ("one class", "30% uniform", "uniform")}
    for result in results.values():
        assert result["fid"] * factor == pytest.approx(result["fid_unscaled"], rel=1e-6)
    # So its order is the raw one, including the pair the per-feature scale swaps on this backbone.
    assert sorted(results, key=lambda n: results[n]["fid"]) == sorted(results, key=lambda n: results[n]["fid_unscaled"])
