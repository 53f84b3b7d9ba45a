"""One exception type for bad input, so every entry point can answer with one line."""


class BrainAtlasInputError(ValueError):
    """Raised for input the user can fix (bad file, missing coordinates, bad midline ...).

    The message is one sentence meant for the user: the command line prints it as one
    line and exits non-zero; the GUI shows it as a napari notification.
    """
