"""Optimizer, schedule and weight penalty from the ``optimizer``, ``scheduler`` and ``trainer`` config groups.

Parameter groups: no weight decay on biases and LayerNorm weights, a separate head learning rate, and layer-wise
learning-rate decay (LLRD) down the backbone: the top layer gets ``lr``, the layer ``d`` below it ``lr * llrd**d``,
and everything in the backbone outside its layer stack ``lr * llrd**n_layers`` (the smallest). That last group is
the embeddings, plus DeBERTa's ``encoder.rel_embeddings`` and ``encoder.LayerNorm`` and MPNet's
``encoder.relative_attention_bias``: they are position embeddings shared by every layer's attention, so they are
treated like the other embeddings rather than like the top layer (MPNet's, named a bias, is not decayed either, as in
transformers.Trainer). The head, the pooling (attention pooling's scorer) and any backbone ``pooler`` are new weights
and get ``head_lr``. Every parameter lands in exactly one group whatever the architecture (test_architectures.py).
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from transformers import get_scheduler
from transformers.trainer_pt_utils import get_parameter_names

# transformers.Trainer's rule: no decay inside nn.LayerNorm modules or on names like these. Nor on the multi-task
# log-variances (``task_weights.log_vars``): decay would pull every task weight towards 1/2.
NO_DECAY_NAMES = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)", r"log_vars"]


LAYER_LISTS = ("layer", "layers")  # BERT/RoBERTa/DeBERTa: encoder.layer; many others: layers


def decayed_names(model: nn.Module) -> set[str]:
    """Weight decay and the L1/L2 penalty act on weight matrices and embeddings, not on biases or norms."""
    return set(get_parameter_names(model, [nn.LayerNorm], NO_DECAY_NAMES))


def layer_stack(backbone: nn.Module) -> tuple[str, int] | None:
    """Name and length of the backbone's list of transformer blocks (the first ModuleList named layer/layers)."""
    for name, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in LAYER_LISTS:
            return name, len(module)
    return None


def param_groups(model: nn.Module, lr: float, weight_decay: float, head_lr: float | None = None,
                 llrd: float = 1.0) -> list[dict]:
    """Named groups, top backbone layer first (so ``get_last_lr()[0]`` is the base schedule), head last.

    The backbone is ``model.backbone`` (``TextRegressor``); a model without one is all head.
    """
    backbone = getattr(model, "backbone", None)
    stack = layer_stack(backbone) if isinstance(backbone, nn.Module) else None
    if llrd != 1.0 and stack is None:
        raise ValueError("optimizer.llrd needs a backbone with a layer list (encoder.layer or layers); use llrd=1.0")
    n_layers = stack[1] if stack else 0

    def where(name: str) -> tuple[str, int]:
        """(group, depth below the top layer: the head is last) of a parameter name."""
        inner = name.removeprefix("backbone.")
        if inner == name or inner.startswith("pooler."):
            return "head", n_layers + 1
        if stack and inner.startswith(f"{stack[0]}."):
            index = int(inner[len(stack[0]) + 1:].split(".")[0])
            return f"{stack[0]}.{index}", n_layers - 1 - index
        return "embeddings", n_layers

    groups, depth_of = {}, {}
    decayed = decayed_names(model)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group, depth = where(name)
        decay = name in decayed
        group_lr = (lr if head_lr is None else head_lr) if group == "head" else lr * llrd**depth
        key = group if decay else f"{group}/no_decay"
        depth_of[key] = (depth, not decay)
        wd = weight_decay if decay else 0.0
        groups.setdefault(key, {"name": key, "params": [], "lr": group_lr, "weight_decay": wd})
        groups[key]["params"].append(param)
    return [groups[key] for key in sorted(groups, key=depth_of.get)]


def build_optimizer(opt_cfg, model: nn.Module):
    """``opt_cfg`` is the ``optimizer`` group: a ``_partial_`` torch.optim class, its arguments, head_lr and llrd."""
    cfg = OmegaConf.to_container(opt_cfg, resolve=True)
    head_lr, llrd = cfg.pop("head_lr", None), cfg.pop("llrd", 1.0)
    groups = param_groups(model, cfg["lr"], cfg.get("weight_decay", 0.0), head_lr, llrd)
    return instantiate(cfg, _convert_="all")(groups)


def build_scheduler(sched_cfg, optimizer, total_steps: int):
    """``transformers.get_scheduler`` over ``total_steps`` optimizer steps (not micro-batches), so accumulation
    does not stretch it; ``warmup`` < 1 is a ratio of those steps, >= 1 a number of steps."""
    warmup = sched_cfg.warmup
    return get_scheduler(
        sched_cfg.name,
        optimizer,
        num_warmup_steps=int(warmup * total_steps) if warmup < 1 else int(warmup),
        num_training_steps=total_steps,
        scheduler_specific_kwargs=dict(sched_cfg.get("kwargs") or {}),
    )


PENALTIES = ("l1", "l2")  # trainer.penalty


def weight_penalty(model: nn.Module, kind: str | None, weight: float):
    """A callable giving the L1 (``weight * sum|w|``) or L2 (``weight/2 * sum w**2``, gradient ``weight * w``) penalty
    toward zero over the decayed parameters, added to the loss; ``None`` when off. Unlike AdamW's decoupled decay it
    goes through the gradient, so adaptive optimizers rescale it."""
    if kind is None or not weight:
        return None
    if kind not in PENALTIES:
        raise ValueError(f"trainer.penalty must be one of {', '.join(PENALTIES)} or null, got {kind!r}")
    decayed = decayed_names(model)
    params = [p for n, p in model.named_parameters() if p.requires_grad and n in decayed]
    if kind == "l1":
        return lambda: weight * sum(p.abs().sum() for p in params)
    return lambda: weight / 2 * sum(p.pow(2).sum() for p in params)
