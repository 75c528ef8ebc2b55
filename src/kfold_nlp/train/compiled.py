"""The compiled path (``trainer.compile``): the backbone's forward through ``torch.compile`` (inductor), in place.

Only the backbone is compiled: it is nearly all of a step's work, and every regularizer, pooling and task calls it
the same way, so none of them needs to know. Compiling in place (``nn.Module.compile``) keeps the parameter names,
so snapshots, selection policies, fold models and the export bundle (which stays eager) see the same state dict
as without it. Sequence lengths change from batch to batch (dynamic padding): the graph is compiled with dynamic
shapes once instead of once per length.
"""

from __future__ import annotations

import os
import shutil

import torch

from ..errors import ConfigError


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would build CPU kernels with (``$CXX``, else g++, c++ or clang++), or None."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    return next((found for name in names if (found := shutil.which(name))), None)


def check_compilable() -> None:
    """Refuse, in one line, ``trainer.compile=true`` where inductor cannot build kernels: a CPU without a compiler."""
    if not torch.cuda.is_available() and cxx_compiler() is None:
        raise ConfigError("trainer.compile=true: torch.compile builds CPU kernels with a C++ compiler and none was "
                          "found (g++, c++, clang++ or $CXX); install one or set trainer.compile=false")


def compile_backbone(model: torch.nn.Module, dynamic: bool = True) -> torch.nn.Module:
    """Compile ``model.backbone``'s forward in place (training and evaluation); returns ``model``."""
    check_compilable()
    model.backbone.compile(dynamic=dynamic)
    return model


def is_compiled(model: torch.nn.Module) -> bool:
    return getattr(model.backbone, "_compiled_call_impl", None) is not None
