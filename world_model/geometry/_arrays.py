"""numpy-in / numpy-out support for the torch geometry functions.

Every function in :mod:`world_model.geometry` is written once, in torch. The env keeps poses
as float64 numpy arrays and the model as float32 tensors, so :func:`accepts_numpy` lets a
function take either: numpy arguments are viewed as tensors (no copy on CPU) and the
tensors it returns are given back as numpy arrays of the same dtype.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import numpy as np
import torch

F = TypeVar("F", bound=Callable[..., Any])


def _to_numpy(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, tuple):
        return type(x)(*(_to_numpy(v) for v in x)) if hasattr(x, "_fields") else tuple(_to_numpy(v) for v in x)
    return x


def accepts_numpy(fn: F) -> F:
    """Let a torch function take numpy arrays; if any argument was numpy, return numpy."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        was_numpy = False

        def convert(x: Any) -> Any:
            nonlocal was_numpy
            if isinstance(x, np.ndarray):
                was_numpy = True
                return torch.from_numpy(np.ascontiguousarray(x))
            return x

        args = tuple(convert(a) for a in args)
        kwargs = {k: convert(v) for k, v in kwargs.items()}
        out = fn(*args, **kwargs)
        return _to_numpy(out) if was_numpy else out

    return wrapper  # type: ignore[return-value]
