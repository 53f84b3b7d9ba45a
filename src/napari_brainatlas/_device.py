"""Choosing the torch device: one rule for every model of the package."""

from __future__ import annotations

import torch

from ._errors import BrainAtlasInputError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" -> CUDA when available, else CPU; asking for CUDA without a GPU is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BrainAtlasInputError("device 'cuda' was asked for but no CUDA GPU is available")
    return dev
