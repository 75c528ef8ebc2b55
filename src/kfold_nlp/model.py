"""Backbone + masked pooling + regression head, built from the ``model`` config group."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer


class Pooler(nn.Module):
    """Turns token states into one vector per text; padding never counts."""

    def __init__(self, kind: str, hidden: int):
        super().__init__()
        if kind not in ("cls", "mean", "attention"):
            raise ValueError(f"model.pooling must be cls, mean or attention, got {kind!r}")
        self.kind = kind
        if kind == "attention":
            self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.kind == "cls":
            return states[:, 0]
        if self.kind == "mean":
            m = mask.unsqueeze(-1).to(states.dtype)
            return (states * m).sum(1) / m.sum(1).clamp(min=1.0)
        scores = self.score(states).squeeze(-1).masked_fill(mask == 0, torch.finfo(states.dtype).min)
        weights = scores.softmax(-1).unsqueeze(-1)
        return (weights * states).sum(1)


class TextRegressor(nn.Module):
    """``backbone -> pool -> dropout -> head``.

    Regularizers change behaviour by swapping ``self.dropout`` (Multi-Sample Dropout returns K samples in train
    mode) or the backbone's layers (Mixout), so every forward still goes through ``__call__`` and stays DDP-safe.
    In train mode with a multi-sample dropout the output is ``K x batch``; otherwise it is ``batch``.
    """

    def __init__(self, backbone: nn.Module, pooling: str = "mean", head_dropout: float = 0.1, n_outputs: int = 1):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.pool = Pooler(pooling, hidden)
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(hidden, n_outputs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs) -> torch.Tensor:
        states = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        features = self.dropout(self.pool(states, attention_mask))
        # The head runs in fp32 even under bf16 autocast: a bf16 output is quantised to ~0.01 at |y| ~ 2.
        with torch.autocast(features.device.type, enabled=False):
            return self.head(features.float()).squeeze(-1)


def load_tokenizer(cfg):
    return AutoTokenizer.from_pretrained(cfg.get("tokenizer") or cfg.backbone)


def build_model(cfg, pretrained: bool | None = None) -> TextRegressor:
    """Build the regressor; ``pretrained=False`` makes the architecture only (for loading a fold checkpoint)."""
    pretrained = cfg.pretrained if pretrained is None else pretrained
    overrides = dict(cfg.get("config_overrides") or {})
    if cfg.get("backbone_dropout") is not None:
        overrides |= {"hidden_dropout_prob": cfg.backbone_dropout, "attention_probs_dropout_prob": cfg.backbone_dropout}
    config = AutoConfig.from_pretrained(cfg.backbone, **overrides)
    if pretrained:
        backbone = AutoModel.from_pretrained(cfg.backbone, config=config)
    else:
        backbone = AutoModel.from_config(config)
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None  # unused by our pooling; unused parameters would break DDP
    return TextRegressor(backbone, cfg.pooling, cfg.head_dropout)
