"""Sample grids (paper Fig. 5, 10) and t-SNE of CNN embeddings (paper Fig. 4)."""

import matplotlib.image
import numpy as np
import pytest
import torch

from privimage.data.base import ImageDataset
from privimage.errors import DataError
from privimage.evaluation.grids import class_grid, save_class_grid
from privimage.evaluation.networks import SmallCNN
from privimage.evaluation.tsne import cnn_embeddings, plot_tsne, tsne_embedding

torch.set_num_threads(2)


def coded_dataset(counts, shape=(1, 8, 8)):
    """Each image is filled with 10 * (its label + 1), so a grid cell tells which class it came from."""
    labels = np.concatenate([np.full(count, label) for label, count in enumerate(counts)]).astype(np.int64)
    images = np.broadcast_to((10 * (labels + 1)).astype(np.uint8)[:, None, None, None], (len(labels), *shape)).copy()
    return ImageDataset("coded", "synthetic", images, labels, tuple(f"class {i}" for i in range(len(counts))))


def test_grid_rows_are_classes_and_missing_samples_stay_blank():
    dataset = coded_dataset([5, 2, 0])
    grid = class_grid(dataset=dataset, samples_per_class=4, padding=2)
    assert grid.shape == (3 * 10 + 2, 4 * 10 + 2, 1)
    cell = lambda row, column: grid[2 + row * 10: 10 + row * 10, 2 + column * 10: 10 + column * 10, 0]
    assert all((cell(0, column) == 10).all() for column in range(4))
    assert (cell(1, 0) == 20).all() and (cell(1, 1) == 20).all()
    # Class 1 has two images and class 2 none: their remaining cells are white, not borrowed from other classes.
    assert (cell(1, 2) == 255).all() and all((cell(2, column) == 255).all() for column in range(4))


def test_grid_keeps_colour_images_in_hwc():
    dataset = coded_dataset([3, 3], shape=(3, 8, 8))
    assert class_grid(dataset=dataset, samples_per_class=3).shape[-1] == 3


def test_save_class_grid_writes_a_png(tmp_path):
    path = save_class_grid(dataset=coded_dataset([4, 4, 4]), path=tmp_path / "fig_grid.png", samples_per_class=4,
                           title="synthetic")
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50
    assert not list(tmp_path.glob(".*.tmp"))


def test_tsne_separates_separable_embeddings_and_plots(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    embeddings = rng.normal(0, 1, (120, 16)) + 20 * np.eye(16)[labels]
    points = tsne_embedding(embeddings=embeddings, seed=0, perplexity=10)
    assert points.shape == (120, 2)
    # Every point's nearest neighbour in the projection has its class.
    distances = ((points[:, None] - points[None]) ** 2).sum(-1) + np.eye(120) * 1e12
    assert (labels[distances.argmin(1)] == labels).mean() > 0.95
    path = plot_tsne(points=points, labels=labels, class_names=("a", "b", "c"), path=tmp_path / "fig_tsne.png")
    assert matplotlib.image.imread(path).ndim == 3
    with pytest.raises(DataError, match="perplexity"):
        tsne_embedding(embeddings=embeddings[:5], seed=0, perplexity=10)


def test_cnn_embeddings_are_the_penultimate_layer():
    model = SmallCNN(in_channels=1, num_classes=3, width=8, embedding_dim=12).eval()
    dataset = coded_dataset([2, 2, 2], shape=(1, 32, 32))
    embeddings = cnn_embeddings(model=model, dataset=dataset)
    assert embeddings.shape == (6, 12) and (embeddings >= 0).all()
    # The head applied to the embeddings gives the network's logits.
    with torch.no_grad():
        logits = model(torch.from_numpy(dataset.images).float() / 127.5 - 1)
        np.testing.assert_allclose(model.head(torch.from_numpy(embeddings)).numpy(), logits.numpy(), rtol=1e-5, atol=1e-5)
