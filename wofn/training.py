"""Bradley-Terry reward-model training: -log sigmoid(r(x, y+) - r(x, y-)).

The model is a backbone with a one-output reward head (`wofn.reward_head`); the input is built by
`wofn.rm_format.encode`, the same function scoring and evaluation use. The trained model is
written as a folder (safetensors, tokenizer, `manifest.json`) that every wofn loader accepts.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from wofn import models, reward_ensemble, reward_head, rm_format
from wofn.paths import publish
from wofn.settings import check_value, setting_default, setting_help

log = logging.getLogger(__name__)


def _from_setting(name: str):
    """A TrainConfig field whose default, help and checks are the setting `name`'s."""
    return field(default=setting_default(name),
                 metadata={"setting": name, "help": f"setting {name}: {setting_help(name)}"})


@dataclass(frozen=True)
class TrainConfig:
    # The recipe's fields are settings (wofn.settings): their defaults and meaning are declared there.
    epochs: float = _from_setting("rm_epochs")
    batch_size: int = _from_setting("rm_batch_size")
    micro_batch: int | None = _from_setting("rm_micro_batch")
    grad_accum: int = field(default=1, metadata={"help": "micro-batches accumulated per optimizer step"})
    learning_rate: float = _from_setting("rm_learning_rate")
    warmup_ratio: float = _from_setting("rm_warmup_ratio")
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    max_length: int = _from_setting("rm_max_length")
    seed: int = _from_setting("seed")
    split_seed: int | None = field(default=None, metadata={"help": "seeds the validation split (None: seed); "
                                                                   "an ensemble's members share one"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 autocast (CPU and recent GPUs)"})
    device: str = _from_setting("device")
    log_every: int = field(default=10, metadata={"help": "optimizer steps between progress reports"})
    val_fraction: float = _from_setting("rm_val_fraction")
    eval_every: int = field(default=0, metadata={"help": "optimizer steps between validation passes "
                                                         "(0 = once per epoch)"})
    select_best: bool = field(default=True, metadata={"help": "keep the checkpoint with the best validation accuracy "
                                                              "(as the paper does)"})
    head: str | None = field(default=None, metadata={
        "help": "reward head for a backbone (wofn.reward_head): hf (transformers' own), mean, last or auto; "
                "None: the init's own (a trained reward model's, else hf). A reward-model init keeps its head; "
                "naming another is an error"})

    def __post_init__(self) -> None:
        for name, setting in SETTING_FIELDS.items():  # the setting's own type and range check, named for both
            try:
                check_value(setting, getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"TrainConfig.{name}: {exc}") from exc
        for name in ("grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.head is not None and self.head not in reward_head.HEADS:
            raise ValueError(f"TrainConfig.head must be one of {', '.join(reward_head.HEADS)}, got {self.head!r}")
        if self.eval_every < 0:
            raise ValueError(f"TrainConfig.eval_every must be >= 0, got {self.eval_every}")


# TrainConfig field -> the setting it is (epochs -> rm_epochs, ...), from the fields' metadata
SETTING_FIELDS = {f.name: f.metadata["setting"] for f in fields(TrainConfig) if "setting" in f.metadata}

Pair = dict  # {"prompt": str, "chosen": str, "rejected": str}


def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    return -F.logsigmoid(r_chosen - r_rejected).mean()


class Objective:
    """How one preference pair becomes model inputs, and how their outputs become a loss.

    Each pair is encoded as `slots` sequences; a batch of B pairs is run as slots x B rows and
    `margins` turns the [slots, B] outputs into one margin per pair (> 0: the chosen response
    is preferred), from which the loss and accuracy follow.
    """

    kind = "reward_model"
    slots = 2

    def encode(self, tokenizer, pair: Pair, max_length: int) -> list[list[int]]:
        return [rm_format.encode(tokenizer, pair["prompt"], pair["chosen"], max_length),
                rm_format.encode(tokenizer, pair["prompt"], pair["rejected"], max_length)]

    def margins(self, outputs: torch.Tensor) -> torch.Tensor:
        """Pointwise Bradley-Terry: r(x, y+) - r(x, y-)."""
        return outputs[0] - outputs[1]

    def loss(self, outputs: torch.Tensor) -> torch.Tensor:
        return bt_loss(outputs[0], outputs[1])


POINTWISE = Objective()


def _forward(model, tokenizer, objective: Objective, encoded: list[list[list[int]]], batch: list[int],
             device: torch.device, bf16: bool) -> torch.Tensor:
    """Outputs [slots, len(batch)] for the pairs `batch`."""
    sequences = [encoded[i][slot] for slot in range(objective.slots) for i in batch]
    inputs = rm_format.collate(tokenizer, sequences)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits[:, 0].float()
    return logits.view(objective.slots, len(batch))


@torch.inference_mode()
def _validate(model, tokenizer, objective: Objective, encoded, device, bf16: bool, batch_size: int,
              margins_out: list | None = None) -> dict:
    """Validation loss and accuracy; with `margins_out`, also each pair's margin, in input order."""
    model.eval()
    losses, correct = [], 0.0
    order = sorted(range(len(encoded)), key=lambda i: max(len(s) for s in encoded[i]))  # little padding
    by_pair = [0.0] * len(encoded)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        outputs = _forward(model, tokenizer, objective, encoded, batch, device, bf16)
        losses.append(objective.loss(outputs).item() * len(batch))
        margins = objective.margins(outputs)
        correct += (margins > 0).float().sum().item() + 0.5 * (margins == 0).float().sum().item()
        for i, m in zip(batch, margins.tolist()):
            by_pair[i] = m
    model.train()
    if margins_out is not None:
        margins_out[:] = by_pair
    return {"val_loss": sum(losses) / len(encoded), "val_accuracy": correct / len(encoded)}


def validation_report(val_pairs: list[Pair], margins: list[float] | None) -> dict | None:
    """The saved weights on the validation split, from their validation pass's margins: accuracy,
    length-balanced accuracy and the length-only rules' accuracy (`wofn.evaluation.metrics_from_margins`),
    or None without a validation split."""
    if not val_pairs or margins is None:
        return None
    from wofn import evaluation  # evaluation imports pairwise, which imports this module

    result = evaluation.metrics_from_margins(margins, val_pairs)
    result.pop("by_source")
    return result


def split_validation(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """A seeded random `fraction` of the pairs for validation, the rest for training."""
    if fraction <= 0 or len(pairs) < 10:
        return list(pairs), []
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed + 1)).tolist()
    n_val = max(1, round(len(pairs) * fraction))
    return [pairs[i] for i in order[n_val:]], [pairs[i] for i in order[:n_val]]


def train_reward_model(init: str, pairs: list[Pair], config: TrainConfig, out_dir: Path,
                       manifest: dict | None = None,
                       progress: Callable[[dict], None] | None = None,
                       objective: Objective = POINTWISE) -> dict:
    """Train from `init` (a backbone or a reward-model spec) and write the model to `out_dir`.

    A seeded `config.val_fraction` of the pairs is held out; with `select_best`, the saved
    weights are those of the validation pass with the best accuracy (ties: lower loss).
    """
    if not pairs:
        raise ValueError("no training pairs")
    if Path(models.resolve(init)).is_dir() and reward_ensemble.is_ensemble(models.resolve(init)):
        raise ValueError(f"{init} is a reward ensemble (wofn.reward_ensemble); training starts from one model: "
                         "a backbone or a single reward model (with teacher_members > 1, use student_init: backbone)")
    torch.manual_seed(config.seed)
    if config.bf16:
        models.warn_if_slow_bf16(config.device, "reward-model training", "rm_bf16: false (TrainConfig.bf16=False)")
    rm = models.load_reward_model(init, device=config.device, head=config.head)
    model, tokenizer = rm.model, rm.tokenizer
    model.train()
    train_pairs, val_pairs = split_validation(
        pairs, config.val_fraction, config.seed if config.split_seed is None else config.split_seed)
    encoded = [objective.encode(tokenizer, p, config.max_length) for p in train_pairs]
    val_encoded = [objective.encode(tokenizer, p, config.max_length) for p in val_pairs]
    per_step = config.batch_size * config.grad_accum
    steps_per_epoch = max(1, math.ceil(len(train_pairs) / per_step))
    total_steps = max(1, math.ceil(len(train_pairs) * config.epochs / per_step))
    eval_every = config.eval_every or steps_per_epoch
    warmup = int(total_steps * config.warmup_ratio)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup)),
    )
    stream = _batches(len(train_pairs), config.batch_size, torch.Generator().manual_seed(config.seed))
    device = torch.device(config.device)
    history, validations = [], []
    best: dict | None = None
    best_state = None
    best_margins: list[float] | None = None
    last_margins: list[float] | None = None
    started = time.monotonic()
    window_loss, window_acc, window_n = 0.0, 0.0, 0
    for step in range(total_steps):
        optimizer.zero_grad(set_to_none=True)
        for _ in range(config.grad_accum):
            batch = next(stream)
            piece = config.micro_batch or len(batch)
            for start in range(0, len(batch), piece):  # the batch's mean loss, summed piece by piece
                part = batch[start : start + piece]
                outputs = _forward(model, tokenizer, objective, encoded, part, device, config.bf16)
                loss = objective.loss(outputs)
                (loss * len(part) / len(batch) / config.grad_accum).backward()
                window_loss += loss.item() * len(part)
                window_acc += (objective.margins(outputs) > 0).float().sum().item()
                window_n += len(part)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        done = step + 1
        if val_encoded and (done % eval_every == 0 or done == total_steps):
            margins: list[float] = []
            # no activations kept for a backward pass: twice the pairs of a training forward fit
            result = {"step": done, **_validate(model, tokenizer, objective, val_encoded, device,
                                                config.bf16, 2 * (config.micro_batch or config.batch_size), margins)}
            validations.append(result)
            last_margins = margins
            log.info("validation at step %d: accuracy %.3f loss %.4f", done, result["val_accuracy"], result["val_loss"])
            if best is None or ((result["val_accuracy"], -result["val_loss"])
                                > (best["val_accuracy"], -best["val_loss"])):
                best, best_margins = result, margins
                if config.select_best and done != total_steps:
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                elif done == total_steps:
                    best_state = None  # the final weights are the best
        if done % config.log_every == 0 or done == total_steps:
            elapsed = time.monotonic() - started
            record = {
                "step": done, "total_steps": total_steps,
                "loss": window_loss / window_n, "accuracy": window_acc / window_n,
                "lr": scheduler.get_last_lr()[0],
                "pairs_per_s": done * per_step / elapsed,
                "eta_s": elapsed / done * (total_steps - done),
                **({"val_accuracy": validations[-1]["val_accuracy"]} if validations else {}),
            }
            history.append(record)
            log.info("train step %d/%d loss %.4f acc %.3f %.1f pairs/s eta %.0fs", done, total_steps,
                     record["loss"], record["accuracy"], record["pairs_per_s"], record["eta_s"])
            if progress:
                progress(record)
            window_loss, window_acc, window_n = 0.0, 0.0, 0
    if config.select_best and best_state is not None:
        model.load_state_dict(best_state)
        log.info("restored the best validation checkpoint (step %d, accuracy %.3f)", best["step"], best["val_accuracy"])
    # the kept weights' own validation pass: the best one's, or the last one's without select_best
    validation = validation_report(val_pairs, best_margins if config.select_best else last_margins)
    model.eval()
    seconds = time.monotonic() - started
    metrics = {
        "steps": total_steps, "pairs": len(pairs), "train_pairs": len(train_pairs), "val_pairs": len(val_pairs),
        "seconds": seconds, "final_loss": history[-1]["loss"], "final_train_accuracy": history[-1]["accuracy"],
        "pairs_per_s": total_steps * per_step / seconds, "history": history, "validations": validations,
        "best_step": best["step"] if (best and config.select_best) else total_steps,
        "best_val_accuracy": best["val_accuracy"] if best else None,
        "validation": validation,
        # the kept weights' margin on each validation pair, in split order (not stored in the manifest)
        "validation_margins": best_margins if config.select_best else last_margins,
    }
    full_manifest = {
        "kind": objective.kind,
        "init": init,
        "init_revision": rm.revision,
        "head": models.reward_head_of(rm.path, config.head),
        "max_length": config.max_length,
        "train_config": asdict(config),
        "train_metrics": {k: v for k, v in metrics.items() if k not in ("history", "validation_margins")},
        **(manifest or {}),
    }
    save(model, tokenizer, out_dir, full_manifest)
    return metrics


def train_ensemble(init: str, pairs: list[Pair], config: TrainConfig, out_dir: Path, members: int,
                   manifest: dict | None = None, progress: Callable[[dict], None] | None = None,
                   objective: Objective = POINTWISE) -> dict:
    """Train `members` reward models from `init` with seeds config.seed, config.seed + 1, ... and write
    them as one ensemble folder (`wofn.reward_ensemble`) to `out_dir`; `members` = 1 is exactly
    `train_reward_model` (a plain model folder).

    The members share one validation split (seeded by config.split_seed, else config.seed), so the
    ensemble's validation report is computed on pairs none of them trained on: accuracy and the
    length rules from the members' mean margin, plus agreement (`reward_ensemble.agreement`): the
    share of pairs all members rank the same way ("unanimous") and the accuracy there. Returns the
    metrics of `train_reward_model`, summed or averaged over the members, with `members` (each
    member's metrics, without its history and margins) and `history` (every member's records, each
    with its `member` index).
    """
    if members < 1:
        raise ValueError(f"an ensemble needs members >= 1, got {members}")
    if members == 1:
        return train_reward_model(init, pairs, config, out_dir, manifest, progress, objective)
    if objective is not POINTWISE:
        raise ValueError(f"teacher ensembles are pointwise reward models; objective {objective.kind!r} "
                         "(a pairwise teacher) cannot be one: use teacher_members: 1 with it")
    out_dir = Path(out_dir)
    staging = out_dir.parent / f".{out_dir.name}.ensemble-staging"
    shutil.rmtree(staging, ignore_errors=True)
    split_seed = config.seed if config.split_seed is None else config.split_seed
    results, history = [], []
    for k in range(members):
        member_config = replace(config, seed=config.seed + k, split_seed=split_seed)

        def report(record: dict, k: int = k) -> None:
            if progress:
                progress({**record, "member": k, "members": members})

        log.info("teacher ensemble: training member %d/%d (seed %d)", k + 1, members, member_config.seed)
        metrics = train_reward_model(init, pairs, member_config, staging / reward_ensemble.MEMBERS_DIR / str(k),
                                     {**(manifest or {}), "member": k}, report, objective)
        results.append(metrics)
        history.extend({**record, "member": k} for record in metrics["history"])
    _, val_pairs = split_validation(pairs, config.val_fraction, split_seed)
    validation = None
    if val_pairs and all(m["validation_margins"] for m in results):
        per_member = [m["validation_margins"] for m in results]
        mean_margins = [sum(column) / members for column in zip(*per_member)]
        validation = validation_report(val_pairs, mean_margins)
        votes = reward_ensemble.agreement(per_member)
        unanimous = [i for i, a in enumerate(votes) if a in (0.0, 1.0)]
        validation.update({
            "members": members,
            "member_accuracies": [m["validation"]["accuracy"] for m in results],
            "member_length_balanced_accuracies": [m["validation"]["length_balanced_accuracy"] for m in results],
            "unanimous_share": len(unanimous) / len(votes),
            "unanimous_accuracy": (sum(votes[i] for i in unanimous) / len(unanimous)) if unanimous else None,
        })
    summary = {
        "members": [{k: v for k, v in m.items() if k not in ("history", "validation_margins", "validations")}
                    for m in results],
        "seconds": sum(m["seconds"] for m in results),
        "final_loss": sum(m["final_loss"] for m in results) / members,
        "final_train_accuracy": sum(m["final_train_accuracy"] for m in results) / members,
        "pairs_per_s": sum(m["pairs_per_s"] for m in results) / members,
        "pairs": len(pairs), "val_pairs": len(val_pairs), "validation": validation,
    }
    reward_ensemble.write_folder(
        staging, [staging / reward_ensemble.MEMBERS_DIR / str(k) for k in range(members)],
        {"member_seeds": [config.seed + k for k in range(members)], "max_length": config.max_length,
         "train_config": {**asdict(config), "split_seed": split_seed}, "train_metrics": summary, **(manifest or {})})
    publish(staging, out_dir)
    return {**summary, "history": history, "steps": sum(m["steps"] for m in results)}


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


def mix_pairs(human: list[Pair], synthetic: list[Pair], ratio: float, seed: int) -> tuple[list[Pair], dict]:
    """All human pairs plus up to `ratio` x as many synthetic pairs (a seeded sample when more).

    The paper mixes human and synthetic data 1:1 (ratio 1.0). When fewer synthetic pairs exist,
    all are used and the achieved ratio is reported in the returned mix summary.
    """
    if ratio < 0:
        raise ValueError(f"synthetic ratio must be >= 0, got {ratio}")
    cap = round(ratio * len(human))
    if len(synthetic) > cap:
        synthetic = random.Random(seed).sample(synthetic, cap)
    mix = {"human_pairs": len(human), "synthetic_pairs": len(synthetic),
           "synthetic_per_human": len(synthetic) / len(human) if human else float("inf"),
           "requested_ratio": ratio}
    keep = ("prompt", "chosen", "rejected")
    return [{k: p[k] for k in keep} for p in human] + [{k: p[k] for k in keep} for p in synthetic], mix
