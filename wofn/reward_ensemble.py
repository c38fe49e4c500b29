"""Teacher ensembles: K reward models read as one, whose reward is the members' mean.

West-of-N distils what its teacher knows, and one teacher's seed noise is as large as the effects
we look for (docs/results_teacher.md: the mean reward of 5 seeds was more accurate than any one
seed, and the pairs all 5 ranked the same way were right far more often than the rest). An
ensemble folder holds K reward models trained from the same backbone with seeds seed, seed+1, ...
(`wofn.training.train_ensemble`):

    <folder>/manifest.json      kind "reward_ensemble", members ["members/0", ...], revision, ...
    <folder>/config.json, tokenizer files   member 0's, so the folder loads like any model folder
    <folder>/members/<k>/       a complete reward-model folder each (safetensors, its own manifest)

`wofn.models.load_reward_model` reads such a folder as one `RewardEnsemble`: its `logits` are the
members' mean reward ([batch, 1]), so scoring, evaluation and export read the mean like any
reward, and it also returns every member's reward (`member_logits`, [batch, K]), which
`wofn.scoring.score_members` reads for the candidate_scores table's `member_rewards`. The pair
step turns those into each pair's `agreement` (sql/label_picks.sql: the share of members that rank
chosen above rejected), a second confidence the filters can rank by (`confidence_measure:
agreement`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from wofn import reward_head

KIND = "reward_ensemble"
MEMBERS_DIR = "members"


def is_ensemble(resolved: str | Path) -> bool:
    path = Path(resolved) / "manifest.json"
    return path.exists() and json.loads(path.read_text()).get("kind") == KIND


def member_dirs(resolved: str | Path) -> list[Path]:
    """The member folders an ensemble folder's manifest names, checked to exist."""
    root = Path(resolved)
    members = json.loads((root / "manifest.json").read_text()).get("members") or []
    if not members:
        raise ValueError(f"{root}: reward ensemble manifest names no members")
    dirs = [root / m for m in members]
    missing = [str(d) for d in dirs if not (d / "config.json").exists()]
    if missing:
        raise FileNotFoundError(f"{root}: reward ensemble member folder(s) missing: {', '.join(missing)}")
    return dirs


def write_folder(folder: Path, members: list[Path], manifest: dict) -> dict:
    """Make `folder` an ensemble of the reward-model folders `members` (inside it, or elsewhere: they
    are named relative to it): member 0's config and tokenizer files, so that the folder loads like a
    model folder, and a manifest of kind KIND naming the members and their revisions (`manifest`'s
    keys added). Returns the manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    revisions = []
    for member in members:
        member_manifest = Path(member) / "manifest.json"
        if not member_manifest.exists():
            raise FileNotFoundError(f"{member}: not a trained reward-model folder (no manifest.json)")
        revisions.append(json.loads(member_manifest.read_text())["revision"])
    for item in Path(members[0]).iterdir():
        if item.is_file() and not item.name.endswith((".safetensors", ".bin")) and item.name not in (
                "manifest.json", reward_head.HEAD_CONFIG):
            shutil.copy2(item, folder / item.name)
    first = json.loads((Path(members[0]) / "manifest.json").read_text())
    full = {"head": first.get("head"), "max_length": first.get("max_length"), "init": first.get("init"),
            **manifest, "kind": KIND,
            "members": [os.path.relpath(Path(m).resolve(), folder.resolve()) for m in members],
            "member_revisions": revisions, "revision": revision_of(revisions)}
    (folder / "manifest.json").write_text(json.dumps(full, indent=2, sort_keys=True, default=str))
    return full


def revision_of(member_revisions: list[str]) -> str:
    """The ensemble's revision: a hash of its members' revisions, in member order."""
    digest = hashlib.sha256("\n".join(member_revisions).encode()).hexdigest()[:16]
    return f"ensemble:{digest}"


@dataclass
class EnsembleOutput:
    logits: torch.Tensor  # [batch, 1]: the members' mean reward
    member_logits: torch.Tensor  # [batch, K]: each member's reward


class RewardEnsemble(torch.nn.Module):
    """Reward models sharing one tokenizer, run on the same inputs; the reward is their mean.

    Used for inference only (members are trained one by one). It takes no KV cache, so scoring
    does not share prompt prefixes for it (`wofn.scoring.reuses_prefix`).
    """

    def __init__(self, members: list[torch.nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("a reward ensemble needs at least one member")
        self.members = torch.nn.ModuleList(members)
        self.config = members[0].config

    def forward(self, input_ids=None, attention_mask=None, **inputs) -> EnsembleOutput:
        rewards = torch.cat([member(input_ids=input_ids, attention_mask=attention_mask, **inputs).logits[:, :1].float()
                             for member in self.members], dim=1)
        return EnsembleOutput(logits=rewards.mean(dim=1, keepdim=True), member_logits=rewards)


def agreement(member_margins: list[list[float]]) -> list[float]:
    """Per pair, the share of members whose margin is > 0 (a 0 margin counts half).

    `member_margins[k][i]`: member k's r(chosen) - r(rejected) on pair i. The same rule as
    sql/label_picks.sql's agreement, for pairs whose label is known (validation, evaluation)."""
    k = len(member_margins)
    return [sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in column) / k for column in zip(*member_margins)]
