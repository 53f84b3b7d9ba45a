"""Label classifiers on embeddings: accuracy, balancing, hierarchy, uncertainty, smoothing."""

import numpy as np
import pytest

from napari_brainatlas import BrainAtlasInputError
from napari_brainatlas.annotate.classifier import (
    HierarchicalLabelClassifier,
    KNNLabelClassifier,
    MLPLabelClassifier,
)
from napari_brainatlas.annotate.smoothing import smooth_labels


def _blobs(n_per=(400, 400, 40), k=8, sep=4.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, sep, (len(n_per), k))
    Z = np.vstack([rng.normal(c, 1.0, (n, k)) for c, n in zip(centres, n_per)])
    y = np.concatenate([[f"t{i}"] * n for i, n in enumerate(n_per)])
    return Z.astype(np.float32), y


def test_mlp_learns_and_balances_rare_class():
    Z, y = _blobs()
    clf = MLPLabelClassifier(max_epochs=60, seed=0).fit(Z, y)
    Zq, yq = _blobs(seed=0)
    pred, unc = clf.predict(Zq)
    assert (pred == yq).mean() > 0.95
    rare = yq == "t2"
    assert (pred[rare] == "t2").mean() > 0.8  # class balancing keeps the rare class
    assert unc.min() >= 0 and unc.max() <= 1
    assert clf.val_accuracy_ > 0.9 and clf.test_accuracy_ > 0.9
    # far from every class centre is more uncertain than at a centre (on average)
    p = clf.predict_proba(Zq)
    assert np.allclose(p.sum(1), 1, atol=1e-5)


def test_mlp_class_balance_weights():
    """Overlapping classes, one rare: the more the loss is balanced, the more often the rare
    class is predicted ("balanced" >= "sqrt" >= "none"); unknown settings are refused."""
    Z, y = _blobs(n_per=(600, 600, 30), sep=1.2, seed=3)
    n_rare = {}
    for bal in ("balanced", "sqrt", "none"):
        clf = MLPLabelClassifier(max_epochs=40, seed=0, balance=bal).fit(Z, y)
        pred, _ = clf.predict(Z)
        n_rare[bal] = int((pred == "t2").sum())
    assert n_rare["balanced"] >= n_rare["sqrt"] >= n_rare["none"], n_rare
    assert n_rare["balanced"] > n_rare["none"], n_rare
    with pytest.raises(BrainAtlasInputError):
        MLPLabelClassifier(balance="inverse")


def test_mlp_early_stopping_monitor():
    """val_score_ is the monitored score of the kept state: mean recall over classes for
    'balanced_accuracy' (by hand on the same validation split), plain accuracy for
    'accuracy'; an unknown monitor is refused."""
    Z, y = _blobs(n_per=(300, 300, 30), sep=1.5, seed=2)  # overlapping: imperfect
    for mon in ("balanced_accuracy", "accuracy", "loss"):
        clf = MLPLabelClassifier(max_epochs=30, seed=0, monitor=mon).fit(Z, y)
        rng = np.random.default_rng(0)
        idx = rng.permutation(len(Z))
        va = idx[round(0.8 * len(Z)) : round(0.8 * len(Z)) + round(0.1 * len(Z))]
        pred = clf.predict(Z[va])[0]
        acc = (pred == y[va]).mean()
        bal = np.mean([(pred[y[va] == c] == c).mean() for c in np.unique(y[va])])
        assert clf.val_accuracy_ == pytest.approx(acc, abs=1e-6)
        if mon == "balanced_accuracy":
            assert clf.val_score_ == pytest.approx(bal, abs=1e-6)
        elif mon == "accuracy":
            assert clf.val_score_ == pytest.approx(acc, abs=1e-6)
        else:
            assert clf.val_score_ < 0  # minus the validation loss
    assert not np.isclose(bal, acc)  # the two scores differ on this data
    assert MLPLabelClassifier().monitor == "balanced_accuracy"
    with pytest.raises(BrainAtlasInputError):
        MLPLabelClassifier(monitor="f1")


def test_mlp_deterministic_for_seed():
    Z, y = _blobs(seed=1)
    a = MLPLabelClassifier(max_epochs=5, seed=3).fit(Z, y).predict_proba(Z)
    b = MLPLabelClassifier(max_epochs=5, seed=3).fit(Z, y).predict_proba(Z)
    assert np.allclose(a, b)


def test_hierarchical_main_then_sub():
    Z, main = _blobs(n_per=(300, 300), sep=6)
    sub = np.where(Z[:, 1] > np.median(Z[:, 1]), "a", "b")
    sub = np.char.add(main.astype(str), sub)
    # make the sub-level depend on a separate embedding direction
    Z[:, 1] += np.where(np.char.endswith(sub, "a"), 3.0, -3.0)
    h = HierarchicalLabelClassifier(max_epochs=60, seed=0).fit(Z, main, sub)
    m, s, um, us = h.predict(Z)
    assert (m == main).mean() > 0.95 and (s == sub).mean() > 0.9
    assert all(si.startswith(mi) for mi, si in zip(m, s))  # sub inside its main class
    assert np.all(us >= um - 1e-6) and us.max() <= 1 and um.min() >= 0


def test_knn_transfer_and_uncertainty():
    Z, y = _blobs()
    knn = KNNLabelClassifier(k=10).fit(Z, y)
    pred, unc = knn.predict(Z)
    assert (pred == y).mean() > 0.95
    # with k = 10 the uncertainty is 1 - (winning votes) / 10: a multiple of 0.1
    assert np.allclose(np.round(unc * 10), unc * 10, atol=1e-5)
    assert unc.min() >= 0 and unc.max() <= 1


def test_spatial_smoothing_removes_salt_and_pepper():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1000, (3000, 2))
    truth = np.where(xy[:, 0] < 500, "L", "R")
    noisy = truth.copy()
    flip = rng.random(len(xy)) < 0.2
    noisy[flip] = np.where(truth[flip] == "L", "R", "L")
    smooth, unc = smooth_labels(xy, noisy, k=30)
    assert (smooth == truth).mean() > 0.97 > (noisy == truth).mean()
    assert unc.min() >= 0 and unc.max() <= 0.5 + 1e-6


def test_bad_embeddings_rejected():
    with pytest.raises(BrainAtlasInputError):
        MLPLabelClassifier().fit(np.full((5, 2), np.nan), ["a"] * 5)
    with pytest.raises(BrainAtlasInputError):
        MLPLabelClassifier().fit(np.zeros((5, 2)), ["a"] * 4)
