"""napari dock widgets (Qt). The engines never import this package."""

__all__ = ["SectionsWidget"]


def __getattr__(name):
    if name == "SectionsWidget":
        from .sections import SectionsWidget

        return SectionsWidget
    raise AttributeError(name)
