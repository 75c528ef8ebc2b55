"""Backbone + masked pooling + regression head, built from the ``model`` config group."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_MAPPING


class Pooler(nn.Module):
    """Turns token states into one vector per text; padding never counts."""

    KINDS = ("cls", "mean", "attention")

    def __init__(self, kind: str, hidden: int):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"model.pooling must be one of {', '.join(self.KINDS)}, got {kind!r}")
        self.kind = kind
        if kind == "attention":
            self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.kind == "cls":
            return states[:, 0]
        if self.kind == "mean":
            m = mask.unsqueeze(-1).to(states.dtype)
            return (states * m).sum(1) / m.sum(1).clamp(min=1.0)
        # Scores in fp32 whatever autocast produced: the masking value and the softmax need fp32's range.
        scores = self.score(states).squeeze(-1).float()
        scores = scores.masked_fill(mask == 0, torch.finfo(scores.dtype).min)
        weights = scores.softmax(-1).unsqueeze(-1).to(states.dtype)
        return (weights * states).sum(1)


class TaskWeights(nn.Module):
    """One learned log-variance ``s_i`` per head output, for the multi-task loss (``tasks.MultiTask``).

    They live in the model, not in the loss, so the optimizer updates them (head parameter group), checkpoints
    carry them and every fold restarts from ``s = 0``. ``forward`` never uses them: predictions are unaffected.
    """

    def __init__(self, n: int):
        super().__init__()
        self.log_vars = nn.Parameter(torch.zeros(n))


class TextRegressor(nn.Module):
    """``backbone -> pool -> dropout -> head``; ``features`` and ``output`` are the two halves.

    Regularizers change behaviour by swapping ``self.dropout`` (Multi-Sample Dropout returns K samples in train
    mode, Mixup mixes the pooled features of two rows) or the backbone's layers (Mixout), so every forward still
    goes through ``__call__`` and stays DDP-safe (calling ``features``/``output`` directly on a DDP-wrapped model
    would bypass DDP's gradient synchronisation). In train mode with a multi-sample dropout the output is
    ``K x batch``; otherwise it is ``batch``. A head with ``n_outputs > 1`` (multi-task: target, standard_error)
    adds a last axis of that size, column 0 being the target, and learned ``task_weights``.
    """

    def __init__(self, backbone: nn.Module, pooling: str = "mean", head_dropout: float = 0.1, n_outputs: int = 1):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.pool = Pooler(pooling, hidden)
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(hidden, n_outputs)
        if n_outputs > 1:
            self.task_weights = TaskWeights(n_outputs)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs) -> torch.Tensor:
        """The pooled text vectors (``batch x hidden``), before the head's dropout."""
        states = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        return self.pool(states, attention_mask)

    def output(self, features: torch.Tensor) -> torch.Tensor:
        """``dropout -> head`` on pooled features."""
        features = self.dropout(features)
        # The head runs in fp32 even under bf16 autocast: a bf16 output is quantised to ~0.01 at |y| ~ 2.
        with torch.autocast(features.device.type, enabled=False):
            return self.head(features.float()).squeeze(-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs) -> torch.Tensor:
        return self.output(self.features(input_ids, attention_mask, **inputs))


def head_outputs(model: nn.Module) -> int:
    """How many columns the head predicts (1: the target; 2: target and standard_error), through a DDP wrapper."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model).head.out_features


def target_column(pred: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """The target predictions of a model output: the only column that is scored, bagged and compared."""
    return pred[..., 0] if head_outputs(model) > 1 else pred


def load_tokenizer(cfg):
    return AutoTokenizer.from_pretrained(cfg.get("tokenizer") or cfg.backbone)


def tokenize(tokenizer, texts, max_length: int) -> dict:
    """Tokenized once per run (not per fold), unpadded: batches are padded to their own longest row."""
    return dict(tokenizer(list(texts), truncation=True, max_length=max_length))


def build_model(cfg, pretrained: bool | None = None, n_outputs: int = 1) -> TextRegressor:
    """Build the regressor; ``pretrained=False`` makes the architecture only (for loading a fold checkpoint).

    ``n_outputs`` comes from the task (``tasks.n_outputs(cfg)``), not the ``model`` group: the same backbone
    serves every task.
    """
    pretrained = cfg.pretrained if pretrained is None else pretrained
    overrides = dict(cfg.get("config_overrides") or {})
    if cfg.get("backbone_dropout") is not None:
        overrides |= {"hidden_dropout_prob": cfg.backbone_dropout, "attention_probs_dropout_prob": cfg.backbone_dropout}
    config = AutoConfig.from_pretrained(cfg.backbone, **overrides)
    if pretrained:  # fp32 master weights even from a checkpoint saved in half precision (autocast does the rest)
        backbone = AutoModel.from_pretrained(cfg.backbone, config=config).float()
    else:
        backbone = AutoModel.from_config(config)
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None  # unused by our pooling; unused parameters would break DDP
    if cfg.get("gradient_checkpointing"):  # non-reentrant: works under DDP, with frozen layers and no_sync
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return TextRegressor(backbone, cfg.pooling, cfg.head_dropout, n_outputs)


def check_backbone(cfg) -> None:
    """Refuse (``ConfigError``, one line) a ``model`` group whose backbone config or tokenizer does not load, or
    whose ``max_length`` the backbone cannot take: not above its position embeddings (read from its config, no
    weights loaded), and room for one token beside the special ones (below that the tokenizer does not truncate at
    all: it warns and returns whole texts; at it every text would be only ``[CLS] [SEP]``)."""
    from ..errors import ConfigError
    from .lora import check_targets, is_lora
    from .weights import check_installed

    check_installed(cfg.backbone)  # model=mpnet_base before `make models`: one line naming that command
    try:
        config = AutoConfig.from_pretrained(cfg.backbone, **dict(cfg.config_overrides or {}))
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.backbone={cfg.backbone}: cannot load its config "
                          f"({' '.join(str(err).split())[:200]})") from None
    if cfg.get("gradient_checkpointing"):
        architecture = MODEL_MAPPING[type(config)]
        if not architecture.supports_gradient_checkpointing:
            raise ConfigError(f"model.gradient_checkpointing=true: {architecture.__name__} ({config.model_type}) "
                              f"has no gradient checkpointing in transformers; set it to false")
    if is_lora(cfg):
        why = check_targets(cfg, config)
        if why:
            raise ConfigError(why)
    limit = getattr(config, "max_position_embeddings", None)
    if limit and cfg.max_length > limit:
        raise ConfigError(f"model.max_length={cfg.max_length}: must be <= {limit}, the backbone's positions")
    try:
        special = load_tokenizer(cfg).num_special_tokens_to_add()
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.tokenizer={cfg.get('tokenizer') or cfg.backbone}: cannot load it "
                          f"({' '.join(str(err).split())[:200]})") from None
    if cfg.max_length < special + 1:
        raise ConfigError(f"model.max_length={cfg.max_length}: must be >= {special + 1}, the tokenizer's "
                          f"{special} special tokens and one of the text")
