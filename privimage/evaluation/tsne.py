"""t-SNE of CNN embeddings (paper Fig. 4).

The CNN classifier trained on a synthetic set maps each real test image to its
penultimate-layer embedding; t-SNE projects those to 2-D, coloured by the true
class. Well-separated clusters mean the classifier learnt class features from
the synthetic data. Computing (`tsne_embedding`) and drawing (`plot_tsne`) are
separate, so a figure can be redrawn without recomputing; `tsne_points` caches a
run folder's points beside it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from sklearn.manifold import TSNE

from privimage.cache import atomic_save_npz, atomic_write_bytes
from privimage.config import Config
from privimage.data.base import ImageDataset
from privimage.data.registry import resolve_data_root
from privimage.errors import DataError
from privimage.evaluation.classifiers import train_classifiers
from privimage.evaluation.datasets import load_test_split
from privimage.evaluation.networks import SmallCNN, predict_batches
from privimage.evaluation.synthetic import load_run_synthetic


def cnn_embeddings(*, model: SmallCNN, dataset: ImageDataset, batch_size: int = 500) -> np.ndarray:
    """Penultimate-layer embeddings of every image (N x embedding_dim)."""
    return predict_batches(model, dataset.images, fn="embed", batch_size=batch_size)


def tsne_embedding(*, embeddings: np.ndarray, seed: int, perplexity: float = 30.0) -> np.ndarray:
    """Project embeddings to 2-D with scikit-learn's t-SNE.

    Args:
        embeddings: N x D feature vectors.
        seed: t-SNE's random state (a plotting seed, not DP noise).
        perplexity: t-SNE perplexity; must be below N.

    Returns:
        N x 2 float array.
    """
    if len(embeddings) <= perplexity:
        raise DataError(f"t-SNE with perplexity {perplexity} needs more than {perplexity:g} points, got {len(embeddings)}")
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(embeddings)


def plot_tsne(*, points: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], path: Path,
              title: str | None = None) -> Path:
    """Scatter 2-D points, one colour per class, and write a PNG atomically.

    Args:
        points: N x 2 output of `tsne_embedding`.
        labels: N class indices.
        class_names: legend entries in label order.
        path: the PNG to write.
        title: optional figure title.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    if len(points) != len(labels):
        raise DataError(f"t-SNE plot: {len(points)} points but {len(labels)} labels")
    figure, axes = plt.subplots(figsize=(5, 5))
    palette = sns.color_palette("tab10" if len(class_names) <= 10 else "husl", len(class_names))
    sns.scatterplot(x=points[:, 0], y=points[:, 1], hue=[class_names[i] for i in labels],
                    hue_order=list(class_names), palette=palette, s=6, linewidth=0, ax=axes)
    axes.set(xticks=[], yticks=[], title=title or "")
    axes.legend(markerscale=2, fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=150, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def tsne_points(*, run_dir: Path, config: Config, data_root: Path | None = None, progress: bool = False) -> dict:
    """t-SNE of the sensitive test images embedded by a CNN trained on a run's synthetic set (paper Fig. 4).

    The CNN is selected on held-out synthetic images only; the test split is
    embedded for the figure (reporting only). Cached beside the run as ``tsne.npz``.

    Args:
        run_dir: a finished run folder.
        config: the resolved config.
        data_root: folder of real datasets (default: `privimage.data.registry.resolve_data_root`).
        progress: show progress bars.

    Returns:
        ``{"points": N x 2, "labels": N, "class_names": tuple}``.
    """

    data_root = resolve_data_root(data_root)
    path = Path(run_dir) / "tsne.npz"
    test = load_test_split(name=config.data.sensitive, data_root=data_root, config=config.data)
    if not path.is_file():
        synthetic = load_run_synthetic(run_dir, data_root=data_root)
        trained = train_classifiers(train=synthetic, config=config.evaluation, seed=config.seed,
                                    num_classes=test.num_classes, kinds=("cnn",), progress=progress)
        embeddings = cnn_embeddings(model=trained.cnn, dataset=test)
        perplexity = min(config.evaluation.tsne_perplexity, (len(test) - 1) / 3)
        atomic_save_npz(path, points=tsne_embedding(embeddings=embeddings, seed=config.seed, perplexity=perplexity),
                        labels=test.labels)
    with np.load(path) as archive:
        return {"points": archive["points"], "labels": archive["labels"], "class_names": test.class_names}
