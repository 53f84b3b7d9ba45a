"""The package's two exceptions: bad input the user can fix, and a run the user cancelled."""

__all__ = ["BrainAtlasInputError", "Cancelled"]


class BrainAtlasInputError(ValueError):
    """Raised for input the user can fix (bad file, missing coordinates, bad midline ...).

    The message is one sentence meant for the user: the command line prints it as one
    line and exits non-zero; the GUI shows it as a napari notification.
    """


class Cancelled(RuntimeError):
    """Raised by every engine when its ``cancel()`` callable returned True.

    One type for all engines (registration, FuseMap and its query mapping, SpaCon,
    CellFormer, the analyses): a dock or a script catches ``Cancelled`` whatever it ran.
    What an engine had reached before the cancel is documented with the engine.
    """
