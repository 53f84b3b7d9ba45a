"""Spatial smoothing of region labels: a kNN vote over cell positions (FuseMap uses k = 30)."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .._errors import BrainAtlasInputError

__all__ = ["smooth_labels"]


def _check_inputs(xy, labels, k, weights) -> None:
    """One :class:`BrainAtlasInputError` for inputs the vote cannot use."""
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise BrainAtlasInputError("smooth_labels needs (n, 2) cell positions")
    if len(labels) != len(xy) or (weights is not None and len(weights) != len(xy)):
        raise BrainAtlasInputError(
            f"smooth_labels: {len(xy)} positions but {len(labels)} labels"
            + ("" if weights is None else f" and {len(weights)} weights")
        )
    if not np.isfinite(xy).all():
        raise BrainAtlasInputError("smooth_labels: some cell positions are NaN or infinite")
    if weights is not None and not np.isfinite(np.asarray(weights, dtype=float)).all():
        raise BrainAtlasInputError("smooth_labels: some weights are NaN or infinite")
    if int(k) < 1:
        raise BrainAtlasInputError(f"smooth_labels: k must be at least 1, not {k}")


def smooth_labels(
    xy_um: np.ndarray, labels: np.ndarray, k: int = 30, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Majority label among each cell's ``k`` spatial neighbours (itself included).

    ``weights`` (e.g. ``1 - uncertainty``) weigh the votes. Returns the smoothed labels and
    their uncertainty ``1 - winning (weighted) share``.
    """
    xy = np.asarray(xy_um, dtype=float)
    labels = np.asarray(labels).astype(str)
    _check_inputs(xy, labels, k, weights)
    if len(xy) == 0:
        return labels, np.zeros(0, np.float32)
    classes, y = np.unique(labels, return_inverse=True)
    k = min(k, len(xy))
    _, idx = cKDTree(xy).query(xy, k=k)
    idx = idx.reshape(len(xy), k)
    w = np.ones(len(xy), np.float32) if weights is None else np.asarray(weights, np.float32)
    votes = np.zeros((len(xy), len(classes)), dtype=np.float32)
    np.add.at(votes, (np.repeat(np.arange(len(xy)), k), y[idx].ravel()), w[idx].ravel())
    tot = votes.sum(1, keepdims=True)
    share = votes / np.where(tot > 0, tot, 1)
    return classes[share.argmax(1)], (1.0 - share.max(1)).astype(np.float32)
