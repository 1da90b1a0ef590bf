"""The in-memory image dataset every stage consumes.

All datasets, embedded or real, load into one `ImageDataset`: uint8 images in
NCHW layout, int64 labels, and the class names in label order. Pixel values stay
uint8 until a model needs floats, so the same quantisation applies to real and
synthetic images everywhere (FID, classifiers, grids).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from privimage.errors import DataError


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Images (uint8, N x C x H x W), labels (int64, N) and class names.

    ``sensitive`` marks the training split of the sensitive dataset: only
    accounted mechanisms (the semantic query, DP-SGD) may read it, and stages
    that must never see it (the semantic query function, FID backbones,
    selection of hyper-parameters) refuse a dataset with this flag.
    """

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    sensitive: bool = False
    _hash: list = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(
                f"{self.name}/{self.split}: images must be uint8 N x C x H x W, "
                f"got {self.images.dtype} with shape {self.images.shape}"
            )
        if self.images.shape[1] not in (1, 3):
            raise DataError(f"{self.name}/{self.split}: images must have 1 or 3 channels, got shape {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(
                f"{self.name}/{self.split}: {self.images.shape[0]} images but labels of shape {self.labels.shape}"
            )
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise DataError(
                f"{self.name}/{self.split}: labels must lie in [0, {len(self.class_names)}), "
                f"got range [{self.labels.min()}, {self.labels.max()}]"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    def content_hash(self) -> str:
        """SHA-256 of images, labels and class names: names a dataset in ledgers and caches."""
        if not self._hash:
            digest = hashlib.sha256()
            digest.update(np.ascontiguousarray(self.images).tobytes())
            digest.update(np.ascontiguousarray(self.labels.astype(np.int64)).tobytes())
            digest.update("\x00".join(self.class_names).encode())
            self._hash.append(digest.hexdigest())
        return self._hash[0]

    def subset(self, indices: np.ndarray, split: str | None = None) -> "ImageDataset":
        """A new dataset of the given rows (keeps class names and the sensitive flag)."""
        indices = np.asarray(indices, dtype=np.int64)
        return ImageDataset(
            name=self.name,
            split=split or self.split,
            images=self.images[indices],
            labels=self.labels[indices],
            class_names=self.class_names,
            sensitive=self.sensitive,
        )

    def as_float(self) -> np.ndarray:
        """Images as float32 in [-1, 1], the range every model here works in."""
        return self.images.astype(np.float32) / 127.5 - 1.0


def refuse_sensitive(dataset: ImageDataset, stage: str) -> None:
    """Raise if a stage that must only see public data is handed the sensitive training set."""
    if dataset.sensitive:
        raise DataError(
            f"{stage} must not read the sensitive training set '{dataset.name}/{dataset.split}' "
            "(only accounted mechanisms may; DESIGN.md, Privacy)"
        )
