"""LoRA adapters (``model.peft=lora``, the peft library): injected into the backbone for training, merged away
before a fold's model is written.

Only the adapters, the pooling and the head train; the backbone's own weights are frozen, so the optimizer keeps
state for a small fraction of the parameters. The adapters are injected in place (``peft.inject_adapter_in_model``,
not a ``PeftModel`` wrapper): the backbone keeps its module names, so LLRD still finds its layer stack, and
snapshots, selection policies (EMA and SWA average the adapters, the frozen weights being constant) and resume work
on the adapted model unchanged. A fold's ``model.safetensors`` holds the merged weights (``W + B A * alpha / r``
under the plain model's names): ``make predict``, refit, distillation, ensembles and the export bundle load it as any
other fold model, without peft and without the adapters' extra matrix products at inference.
"""

from __future__ import annotations

import copy

from torch import nn

LORA = "lora"  # the one model.peft choice


def is_lora(cfg) -> bool:
    """Whether the ``model`` group asks for LoRA adapters."""
    return cfg.get("peft") == LORA


def lora_config(cfg):
    """peft's ``LoraConfig`` from ``model.lora`` (target_modules null: peft's default for the architecture)."""
    from peft import LoraConfig

    lora = cfg.lora
    targets = list(lora.target_modules) if lora.get("target_modules") is not None else None
    return LoraConfig(r=int(lora.r), lora_alpha=float(lora.alpha), lora_dropout=float(lora.dropout),
                      target_modules=targets, bias="none")


def adapt(model: nn.Module, cfg) -> nn.Module:
    """Inject LoRA adapters into ``model.backbone`` in place and freeze its own weights (a no-op unless
    ``model.peft=lora``); returns ``model``."""
    if is_lora(cfg):
        from peft import inject_adapter_in_model

        inject_adapter_in_model(lora_config(cfg), model.backbone)
    return model


def is_adapted(model: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())


def merged(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every LoRA layer merged into its base layer and replaced by it: the plain model
    (the same state-dict names as ``build_model(pretrained=False)``'s); ``model`` itself when it has no adapters."""
    from peft.tuners.lora import LoraLayer

    if not is_adapted(model):
        return model
    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(plain.get_submodule(parent), child, module.get_base_layer())
    for param in plain.parameters():  # trainable again, as a plain model is (refit and distillation start from it)
        param.requires_grad_(True)
    return plain


def check_targets(cfg, config) -> str | None:
    """Why ``model.lora`` cannot adapt a backbone of this ``config`` (read without weights), or None: no default
    target for its architecture in peft, or target names that match none of its modules."""
    import torch
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS
    from transformers import AutoModel

    targets = cfg.lora.get("target_modules")
    if targets is None:
        if config.model_type not in DEFAULTS:
            return (f"model.lora.target_modules=null: peft has no default for {config.model_type}; name its "
                    f"attention projections (for example [q, v] for MPNet)")
        return None
    with torch.device("meta"):  # the architecture's module names, no memory, no weights
        names = [name for name, _ in AutoModel.from_config(config).named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if missing:
        return f"model.lora.target_modules: {missing[0]!r} names no module of {config.model_type}"
    return None
