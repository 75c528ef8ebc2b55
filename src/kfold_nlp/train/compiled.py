"""The compiled path (``trainer.compile``): the backbone's forward through ``torch.compile`` (inductor), in place.

Only the backbone is compiled: it is nearly all of a step's work, and every regularizer, pooling and task calls it
the same way, so none of them needs to know. Compiling in place (``nn.Module.compile``) keeps the parameter names,
so snapshots, selection policies, fold models and the export bundle (which stays eager) see the same state dict
as without it. Sequence lengths change from batch to batch (dynamic padding): the graph is compiled with dynamic
shapes once instead of once per length.
"""

from __future__ import annotations

import torch


def compile_backbone(model: torch.nn.Module, dynamic: bool = True) -> torch.nn.Module:
    """Compile ``model.backbone``'s forward in place (training and evaluation); returns ``model``."""
    model.backbone.compile(dynamic=dynamic)
    return model


def is_compiled(model: torch.nn.Module) -> bool:
    return getattr(model.backbone, "_compiled_call_impl", None) is not None
