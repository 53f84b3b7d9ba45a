"""Annotation: label transfer from a reference onto query sections, and imputation."""

from .classifier import HierarchicalLabelClassifier, KNNLabelClassifier, MLPLabelClassifier
from .smoothing import smooth_labels

__all__ = ["MLPLabelClassifier", "HierarchicalLabelClassifier", "KNNLabelClassifier",
           "smooth_labels"]
