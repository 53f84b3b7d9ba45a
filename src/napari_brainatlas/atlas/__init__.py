"""Atlas access: one :class:`Atlas` type over the demo atlas, local Allen files and BrainGlobe."""

from .atlas import HEMISPHERES, PLANES, Atlas, AtlasSlice
from .demo_atlas import DEMO_MAJOR_DIVISIONS, make_demo_atlas
from .ontology import Ontology

__all__ = [
    "DEMO_MAJOR_DIVISIONS",
    "HEMISPHERES",
    "PLANES",
    "Atlas",
    "AtlasSlice",
    "Ontology",
    "make_demo_atlas",
]
