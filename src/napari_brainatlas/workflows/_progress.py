"""Adapting the engines' progress callbacks to the one protocol of :mod:`..jobs`.

Engines report in several shapes today (``progress(epoch, n, losses_dict)``,
``progress(epoch, n, loss)``, ``progress(iteration, cost_um)``, ``progress(message,
fraction)``); the workflows hand every engine a :func:`relay` so that what reaches the
caller is always ``progress(done, total, info)``. A relay also passes the one protocol
through unchanged, so it keeps working when an engine switches to it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .._errors import Cancelled
from ..jobs import ProgressFn, report

__all__ = ["raise_if_cancelled", "relay"]


def relay(
    progress: ProgressFn | None,
    value_key: str = "value",
    *,
    offset: int = 0,
    extra: int = 0,
    **fixed,
) -> Callable | None:
    """An engine callback that forwards to ``progress(done, total, info)``.

    ``value_key`` names a bare number an engine passes (``"loss"``, ``"cost_um"``);
    ``offset`` is added to ``done`` and ``total`` and ``extra`` to ``total`` (a stage
    inside a longer job); ``fixed`` items go into every ``info`` (``phase="train"``).
    Returns None when ``progress`` is None (engines skip the call).
    """
    if progress is None:
        return None

    def forward(*args):
        if len(args) == 3 and isinstance(args[2], Mapping):
            done, total, info = args[0], args[1], dict(args[2])
        elif len(args) == 3:
            done, total, info = args[0], args[1], {value_key: args[2]}
        elif len(args) == 2:
            done, total, info = args[0], None, {value_key: args[1]}
        else:
            raise TypeError(f"unexpected progress arguments {args!r}")
        total = None if total is None else int(total) + offset + extra
        report(progress, int(done) + offset, total, **{**fixed, **info})

    return forward


def raise_if_cancelled(obj) -> None:
    """Raise :class:`Cancelled` when an engine stopped on ``cancel()`` by setting its
    ``cancelled`` flag instead of raising (FuseMap, QueryMapping, CellFormer today)."""
    if getattr(obj, "cancelled", False):
        raise Cancelled("cancelled")
