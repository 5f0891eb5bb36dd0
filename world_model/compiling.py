"""``torch.compile`` of a module's methods, built on first use and never copied.

:class:`CompiledMethods` gives an ``nn.Module`` ``self.compiled("method")``: the
``torch.compile`` (Inductor, ``dynamic=False``) of that bound method, built once per module
and kept in its ``__dict__`` (not a child module, so not in the state dict). Deep copies and
pickles leave it behind: it is bound to this module's weights, and a copy builds its own.
"""

from __future__ import annotations

import torch

__all__ = ["COMPILED_GRAPHS", "CompiledMethods"]

COMPILED_GRAPHS = 64
"""Distinct graphs dynamo keeps per compiled function before falling back to eager: one per
batch size x precision x pass kind, so a benchmark over several of each stays compiled
(dynamo's default limit is 8)."""

_PREFIX = "_compiled_"


class CompiledMethods:
    """Mixin for ``nn.Module`` subclasses (list it before ``nn.Module``)."""

    def compiled(self, name: str):
        """``torch.compile(self.<name>, dynamic=False)``, built once."""
        key = _PREFIX + name
        fn = self.__dict__.get(key)
        if fn is None:
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, COMPILED_GRAPHS)
            fn = self.__dict__[key] = torch.compile(getattr(self, name), dynamic=False)
        return fn

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith(_PREFIX)}
