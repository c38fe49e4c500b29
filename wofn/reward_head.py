"""The reward head: how a backbone's hidden states become one reward per sequence.

`AutoModelForSequenceClassification` gives every architecture the head transformers ships for
it. For decoders that is the right one (a linear layer on the last real token), but for a BERT
encoder it reads BERT's pooler (CLS -> dense -> tanh), which sentence-transformer checkpoints
such as all-MiniLM-L6-v2 were never trained to produce: they were trained for MEAN pooling over
the last hidden states. Heads:

- `hf`: the `AutoModelForSequenceClassification` head (pooler for BERT, last real token for
  decoders). Model folders written before heads existed, and hub reward models, are this.
- `mean`: a linear layer on the mean of the last hidden states over the real (unpadded) tokens.
- `last`: a linear layer on the last real token's hidden state (inputs are right-padded,
  `wofn.rm_format.collate`).
- `auto`: `mean` for a sentence-transformers checkpoint whose pooling config says mean tokens,
  else `hf`.

A `mean` / `last` model folder is the backbone as transformers saves it (`config.json`,
`model.safetensors`, tokenizer) plus `reward_head.safetensors` (the linear layer) and
`reward_head.json` (`{"pooling": ...}`). `wofn.models.load_reward_model` reads the head from
the folder, so training, scoring, evaluation and every loader compute rewards the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

HEADS = ("auto", "hf", "mean", "last")
POOLINGS = ("mean", "last")
HEAD_CONFIG = "reward_head.json"
HEAD_WEIGHTS = "reward_head.safetensors"


class RewardOutput:
    """What a forward pass returns: `.logits` [batch, 1], as a sequence-classification model's."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


class PooledRewardModel(torch.nn.Module):
    """A transformers backbone (`AutoModel`) and a linear reward head over pooled hidden states."""

    def __init__(self, backbone: torch.nn.Module, pooling: str) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
        self.backbone = backbone
        self.config = backbone.config
        self.pooling = pooling
        hidden = backbone.config.hidden_size
        self.score = torch.nn.Linear(hidden, 1)
        std = getattr(backbone.config, "initializer_range", 0.02)
        torch.nn.init.normal_(self.score.weight, std=std)  # as transformers initialises its heads
        torch.nn.init.zeros_(self.score.bias)
        self.score.to(device=next(backbone.parameters()).device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_) -> RewardOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
        if self.pooling == "mean":
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # [B, H]
        else:
            last = attention_mask.sum(1).clamp(min=1) - 1  # right-padded: the last real token
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return RewardOutput(self.score(pooled.to(self.score.weight.dtype)))  # [B, 1]

    def save_pretrained(self, out: Path | str, safe_serialization: bool = True) -> None:
        from safetensors.torch import save_file

        if not safe_serialization:
            raise ValueError("wofn writes reward models as safetensors only")
        out = Path(out)
        self.backbone.save_pretrained(out, safe_serialization=True)
        save_file({k: v.detach().float().contiguous().cpu() for k, v in self.score.state_dict().items()},
                  str(out / HEAD_WEIGHTS))
        (out / HEAD_CONFIG).write_text(json.dumps({"pooling": self.pooling}, indent=2) + "\n")


def stored_pooling(folder: Path | str) -> str | None:
    """The pooling of a folder written with a `mean` / `last` head, else None (an `hf` head)."""
    path = Path(folder) / HEAD_CONFIG
    if not path.exists():
        return None
    try:
        pooling = json.loads(path.read_text())["pooling"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a wofn reward-head config ({err}); expected {{\"pooling\": \"mean\"}}") from None
    if pooling not in POOLINGS:
        raise ValueError(f"{path}: pooling {pooling!r}, expected one of {', '.join(POOLINGS)}")
    return pooling


def trained_for_mean_pooling(folder: Path | str) -> bool:
    """A sentence-transformers checkpoint whose pooling module averages the token embeddings."""
    folder = Path(folder)
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (OSError, ValueError):
        return False
    for module in modules:
        if str(module.get("type", "")).endswith("Pooling"):
            try:
                pooling = json.loads((folder / module.get("path", "") / "config.json").read_text())
            except (OSError, ValueError):
                return False
            return bool(pooling.get("pooling_mode_mean_tokens"))
    return False


def resolve_head(head: str, resolved: str) -> str:
    """`auto` turned into `mean` or `hf` for the backbone at `resolved` (a folder or a hub id)."""
    if head not in HEADS:
        raise ValueError(f"reward head {head!r}: expected one of {', '.join(HEADS)}")
    if head != "auto":
        return head
    return "mean" if trained_for_mean_pooling(resolved) else "hf"


def load_head(model: PooledRewardModel, folder: Path | str) -> None:
    """Load `reward_head.safetensors` from `folder` into `model.score`."""
    from safetensors.torch import load_file

    path = Path(folder) / HEAD_WEIGHTS
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {Path(folder) / HEAD_CONFIG} names a pooled head, "
                                "but its weights are not there (copy the whole model folder)")
    state = load_file(str(path))
    try:
        model.score.load_state_dict({k: v.to(model.score.weight.dtype) for k, v in state.items()}, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: does not fit the backbone's hidden size ({err})") from None
