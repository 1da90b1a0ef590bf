"""Evaluation of synthetic datasets (paper Section 4.3): FID, classification
accuracy of LR/MLP/CNN, t-SNE of CNN embeddings, sample grids, and Table 4's
resource comparison (per-stage measurement: `privimage.resource_usage`).

- `evaluate_synthetic` - FID and CA of one synthetic set (``privimage evaluate``);
  `samples_fid` - the FID alone of a folder of samples; `load_run_synthetic` - a
  run folder's synthetic set.
- `frechet_distance`, `load_fid_backbone`, `reference_statistics` - FID with
  pytorch-fid's Inception, or the offline public-data backbone (its features
  standardised with public statistics: `public_feature_standardisation`).
- `classification_accuracy`, `train_classifiers`, `score_on_test` - LR, MLP, CNN.
- `cnn_embeddings`, `tsne_embedding`, `plot_tsne`, `tsne_points` - paper Fig. 4.
- `class_grid`, `save_class_grid` - paper Fig. 5 and Fig. 10.
"""

from privimage.evaluation.classifiers import (
    CLASSIFIERS,
    TrainedClassifiers,
    classification_accuracy,
    score_on_test,
    split_for_validation,
    train_classifiers,
)
from privimage.evaluation.evaluate import evaluate_synthetic, samples_fid
from privimage.evaluation.fid import (
    FeatureExtractor,
    InceptionFeatures,
    OfflineFeatures,
    choose_backbone,
    download_inception_weights,
    find_inception_weights,
    frechet_distance,
    load_fid_backbone,
    public_feature_standardisation,
    reference_statistics,
)
from privimage.evaluation.grids import class_grid, save_class_grid
from privimage.evaluation.synthetic import load_run_synthetic, load_synthetic_npz
from privimage.evaluation.tsne import cnn_embeddings, plot_tsne, tsne_embedding, tsne_points

__all__ = [
    "CLASSIFIERS", "FeatureExtractor", "InceptionFeatures", "OfflineFeatures", "TrainedClassifiers",
    "choose_backbone", "class_grid", "classification_accuracy", "cnn_embeddings", "download_inception_weights",
    "evaluate_synthetic", "find_inception_weights", "frechet_distance", "load_fid_backbone", "load_run_synthetic",
    "load_synthetic_npz", "plot_tsne", "public_feature_standardisation", "reference_statistics",
    "samples_fid", "save_class_grid", "score_on_test", "split_for_validation", "train_classifiers",
    "tsne_embedding", "tsne_points",
]
