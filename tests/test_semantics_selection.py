"""Selection from the noisy semantic distribution (paper Section 3.3, Table 8) and SDS (Eq. 5)."""

import numpy as np
import pytest

from privimage.config import load_config
from privimage.data.base import ImageDataset
from privimage.errors import ConfigError, PrivImageError
from privimage.semantics.query import NoisySemanticDistribution
from privimage.semantics.selection import build_selection, query_settings, select_semantics, semantics_per_row
from privimage.semantics.stage import resolve_query_settings


@pytest.mark.parametrize("ratio, expected", [(0.01, 1), (0.05, 5), (0.1, 10), (0.2, 20), (0.5, 50), (1.0, 100)])
def test_semantics_per_row_matches_paper_table_8_for_ten_classes(ratio, expected):
    assert semantics_per_row(selection_ratio=ratio, num_public_classes=1000, num_rows=10) == expected


def test_semantics_per_row_single_row_matches_celeba_column():
    # CelebA (one row) against 1000 ImageNet classes: 1% -> 10, 5% -> 50 (paper Table 8).
    assert semantics_per_row(selection_ratio=0.01, num_public_classes=1000, num_rows=1) == 10
    assert semantics_per_row(selection_ratio=0.05, num_public_classes=1000, num_rows=1) == 50


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, float("nan")])
def test_invalid_selection_ratio_is_refused(ratio):
    with pytest.raises(PrivImageError, match="selection_ratio"):
        semantics_per_row(selection_ratio=ratio, num_public_classes=1000, num_rows=10)


def test_too_many_semantics_for_public_classes_is_refused():
    with pytest.raises(PrivImageError, match="public classes"):
        semantics_per_row(selection_ratio=1.0, num_public_classes=15, num_rows=10)


def test_select_takes_top_n_per_row_without_reuse():
    histogram = np.array([
        [9.0, 8.0, 1.0, 0.0, 0.0],
        [7.0, 9.5, 3.0, 2.0, 0.0],  # wants 1 and 0, both taken by row 0
    ])
    assert select_semantics(histogram, per_row=2) == [[0, 1], [2, 3]]


def _toy_public():
    # 6 public classes, 3 images each; image value encodes its class.
    labels = np.repeat(np.arange(6), 3)
    images = np.broadcast_to(labels[:, None, None, None].astype(np.uint8), (18, 1, 4, 4)).copy()
    return ImageDataset("toy", "train", images, labels, tuple(f"S{i}" for i in range(6)))


def test_build_selection_relabels_to_the_sensitive_class_that_chose():
    public = _toy_public()
    histogram = np.zeros((2, 6))
    histogram[0, 4] = 10.0  # class "a" picks S4
    histogram[1, 1] = 10.0  # class "b" picks S1
    distribution = NoisySemanticDistribution(histogram, ("a", "b"), public.class_names, 1, 1.0, "os-entropy", "x")
    selection = build_selection(distribution=distribution, public=public, selection_ratio=2 / 6)
    assert selection.selected == {"a": ["S4"], "b": ["S1"]}
    assert selection.dataset.class_names == ("a", "b")
    # Every selected image keeps its pixels and takes the label of the row that chose its class.
    pixel_class = selection.dataset.images[:, 0, 0, 0]
    assert sorted(set(pixel_class.tolist())) == [1, 4]
    assert np.all(selection.dataset.labels[pixel_class == 4] == 0)
    assert np.all(selection.dataset.labels[pixel_class == 1] == 1)
    assert selection.selection_ratio_achieved == pytest.approx(6 / 18)


def test_build_selection_refuses_a_foreign_public_dataset():
    public = _toy_public()
    distribution = NoisySemanticDistribution(np.zeros((1, 6)), ("a",), tuple("UVWXYZ"), 1, 1.0, "os-entropy", "x")
    with pytest.raises(PrivImageError, match="not the one"):
        build_selection(distribution=distribution, public=public, selection_ratio=0.5)


def test_relabelling_follows_the_sensitive_label_order_not_the_order_json_gives_back():
    import json

    from privimage.semantics.selection import relabel_selected

    public = _toy_public()
    # "zero" is label 0 and "eight" label 1; a JSON round trip with sorted keys puts "eight" first.
    selected = json.loads(json.dumps({"zero": ["S2"], "eight": ["S5"]}, sort_keys=True))
    assert list(selected) == ["eight", "zero"]
    dataset = relabel_selected(public=public, selected=selected, class_names=("zero", "eight"))
    pixel_class = dataset.images[:, 0, 0, 0]
    assert dataset.class_names == ("zero", "eight")
    assert np.all(dataset.labels[pixel_class == 2] == 0) and np.all(dataset.labels[pixel_class == 5] == 1)
    with pytest.raises(PrivImageError, match="sensitive classes"):
        relabel_selected(public=public, selected=selected, class_names=("zero", "one"))


@pytest.mark.parametrize("ratio, n", [(0.01, 1), (0.05, 5), (0.1, 10), (0.2, 20), (0.5, 50), (1.0, 100)])
def test_k_follows_n_through_the_rq3_sweep_unless_the_config_sets_k(ratio, n):
    # Paper Appendix A ("we set k = N") and Table 8: 10 sensitive classes, 1,000 public ones.
    follows = query_settings(config=load_config("quick", {"semantics.selection_ratio": ratio}),
                             num_public_classes=1000, num_rows=10)
    assert (follows.k, follows.semantics_per_class, follows.k_follows_semantics_per_class) == (n, n, True)
    assert follows.query_noise_multiplier == 39.0
    fixed = query_settings(config=load_config("quick", {"semantics.selection_ratio": ratio, "semantics.k": 2}),
                           num_public_classes=1000, num_rows=10)
    assert (fixed.k, fixed.semantics_per_class, fixed.k_follows_semantics_per_class) == (2, n, False)


def test_query_settings_of_the_profiles_from_the_datasets_metadata(tmp_path):
    quick = resolve_query_settings(load_config("quick"))
    assert (quick.query_noise_multiplier, quick.k, quick.semantics_per_class) == (39.0, 1, 1)
    # The paper profile needs no dataset files: CIFAR-10 and ImageNet's sizes come from the registry.
    paper = resolve_query_settings(load_config("paper"), data_root=tmp_path)
    assert (paper.query_noise_multiplier, paper.k, paper.semantics_per_class) == (484.0, 1, 1)
    # CelebA is one row: 1% of 1,000 classes is N = 10 for it, and k follows.
    celeba = resolve_query_settings(load_config("paper", {"data.sensitive": "celeba32"}), data_root=tmp_path)
    assert (celeba.query_noise_multiplier, celeba.k, celeba.semantics_per_class) == (5300.0, 10, 10)
    # The non-private ablation's exact histogram has no noise.
    assert resolve_query_settings(load_config("quick"), private=False).query_noise_multiplier == 0.0


def test_a_k_above_the_public_classes_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"semantics\.k must lie in \[1, 1000\].*got 1001"):
        query_settings(config=load_config("quick", {"semantics.k": 1001}), num_public_classes=1000, num_rows=10)
    with pytest.raises(ConfigError, match=r"semantics\.k must be >= 1"):
        load_config("quick", {"semantics.k": 0})
