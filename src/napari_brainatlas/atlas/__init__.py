"""Atlas access: one :class:`Atlas` type over the demo atlas, local Allen files and BrainGlobe."""

from .atlas import HEMISPHERES, PLANES, Atlas, AtlasSlice, make_demo_atlas
from .demo_atlas import DEMO_MAJOR_DIVISIONS
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
