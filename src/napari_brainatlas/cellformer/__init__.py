"""CellFormer: a small Transformer cell encoder (gene + expression-bin tokens, masked-value
training); no Qt / napari imports. See :mod:`.model`."""

from .model import LATENT_KEY, CellFormer, CellFormerModule, resolve_device, tokenize
from .settings import CellFormerSettings

__all__ = [
    "LATENT_KEY",
    "CellFormer",
    "CellFormerModule",
    "CellFormerSettings",
    "resolve_device",
    "tokenize",
]
