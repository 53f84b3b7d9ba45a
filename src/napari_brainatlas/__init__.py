"""napari-brainatlas: spatial annotation of brain tissue sections in napari.

The engines (``io``, ``atlas``, ``demo``, ``register``, ``model``, ``annotate``) are plain
Python and never import Qt or napari; ``widgets`` holds the thin napari dock widgets.
"""

from ._errors import BrainAtlasInputError, Cancelled

__version__ = "0.1.0"

__all__ = ["BrainAtlasInputError", "Cancelled", "__version__"]
