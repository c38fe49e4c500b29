"""Bradley-Terry reward-model training: -log sigmoid(r(x, y+) - r(x, y-)).

The model is any `AutoModelForSequenceClassification` with one output; the input is built by
`wofn.rm_format.encode`, the same function scoring and evaluation use. The trained model is
written as a folder (safetensors, tokenizer, `manifest.json`) that every wofn loader accepts.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from wofn import models, rm_format
from wofn.paths import publish

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = field(default=1.0, metadata={"help": "passes over the training pairs (fractions allowed)"})
    batch_size: int = field(default=16, metadata={"help": "pairs per optimizer step (before accumulation)"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches accumulated per optimizer step"})
    learning_rate: float = field(default=3e-5, metadata={"help": "AdamW peak learning rate"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "share of steps with linear warmup, then linear decay to 0"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    max_length: int = field(default=256, metadata={"help": "tokens per (prompt, response), cut from the left"})
    seed: int = field(default=0, metadata={"help": "seeds the head's initialisation, shuffling and dropout"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 autocast (CPU and recent GPUs)"})
    device: str = field(default="cpu", metadata={"help": "torch device, e.g. cpu or cuda"})
    log_every: int = field(default=10, metadata={"help": "optimizer steps between progress reports"})

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "max_length", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.epochs > 0:
            raise ValueError(f"TrainConfig.epochs must be > 0, got {self.epochs}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"TrainConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


Pair = dict  # {"prompt": str, "chosen": str, "rejected": str}


def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def train_reward_model(init: str, pairs: list[Pair], config: TrainConfig, out_dir: Path,
                       manifest: dict | None = None,
                       progress: Callable[[dict], None] | None = None) -> dict:
    """Train from `init` (a backbone or a reward-model spec) and write the model to `out_dir`."""
    if not pairs:
        raise ValueError("no training pairs")
    torch.manual_seed(config.seed)
    rm = models.load_reward_model(init, device=config.device)
    model, tokenizer = rm.model, rm.tokenizer
    model.train()
    encoded = [
        (rm_format.encode(tokenizer, p["prompt"], p["chosen"], config.max_length),
         rm_format.encode(tokenizer, p["prompt"], p["rejected"], config.max_length))
        for p in pairs
    ]
    per_step = config.batch_size * config.grad_accum
    total_steps = max(1, math.ceil(len(pairs) * config.epochs / per_step))
    warmup = int(total_steps * config.warmup_ratio)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup)),
    )
    generator = torch.Generator().manual_seed(config.seed)
    stream = _batches(len(pairs), config.batch_size, generator)
    device = torch.device(config.device)
    use_bf16 = config.bf16
    history = []
    started = time.monotonic()
    window_loss, window_acc, window_n = 0.0, 0.0, 0
    for step in range(total_steps):
        optimizer.zero_grad(set_to_none=True)
        for _ in range(config.grad_accum):
            batch = next(stream)
            inputs = rm_format.collate(tokenizer, [encoded[i][0] for i in batch] + [encoded[i][1] for i in batch])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                rewards = model(**{k: v.to(device) for k, v in inputs.items()}).logits[:, 0].float()
            r_chosen, r_rejected = rewards[: len(batch)], rewards[len(batch):]
            loss = bt_loss(r_chosen, r_rejected)
            (loss / config.grad_accum).backward()
            window_loss += loss.item() * len(batch)
            window_acc += (r_chosen > r_rejected).float().sum().item()
            window_n += len(batch)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if (step + 1) % config.log_every == 0 or step + 1 == total_steps:
            elapsed = time.monotonic() - started
            record = {
                "step": step + 1, "total_steps": total_steps,
                "loss": window_loss / window_n, "accuracy": window_acc / window_n,
                "lr": scheduler.get_last_lr()[0],
                "pairs_per_s": (step + 1) * per_step / elapsed,
                "eta_s": elapsed / (step + 1) * (total_steps - step - 1),
            }
            history.append(record)
            log.info("train step %d/%d loss %.4f acc %.3f %.1f pairs/s eta %.0fs", record["step"],
                     total_steps, record["loss"], record["accuracy"], record["pairs_per_s"], record["eta_s"])
            if progress:
                progress(record)
            window_loss, window_acc, window_n = 0.0, 0.0, 0
    model.eval()
    seconds = time.monotonic() - started
    metrics = {
        "steps": total_steps, "pairs": len(pairs), "seconds": seconds,
        "final_loss": history[-1]["loss"], "final_train_accuracy": history[-1]["accuracy"],
        "pairs_per_s": total_steps * per_step / seconds, "history": history,
    }
    full_manifest = {
        "kind": "reward_model",
        "init": init,
        "init_revision": rm.revision,
        "max_length": config.max_length,
        "train_config": asdict(config),
        "train_metrics": {k: v for k, v in metrics.items() if k != "history"},
        **(manifest or {}),
    }
    save(model, tokenizer, out_dir, full_manifest)
    return metrics


def save(model, tokenizer, out_dir: Path, manifest: dict) -> None:
    """Write the model folder next to `out_dir` and swap it in when complete."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    manifest = {**manifest, "revision": models.revision(str(staging))}
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    publish(staging, out_dir)


def _batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless stream of index batches: reshuffled every epoch, the last partial batch kept."""
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]
