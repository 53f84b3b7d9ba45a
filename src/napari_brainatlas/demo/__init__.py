"""Demo data the package generates itself: the demo atlas and demo sections."""

from .files import write_demo_data
from .sections import CORE_GENES, DEFAULT_SECTIONS, make_demo_sections

__all__ = ["CORE_GENES", "DEFAULT_SECTIONS", "make_demo_sections", "write_demo_data"]
