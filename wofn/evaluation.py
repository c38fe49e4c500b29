"""Evaluating a reward model on human preference pairs."""

from __future__ import annotations

import math

from wofn import models, scoring

DEFAULT_MAX_LENGTH = 256


def evaluate_loaded(rm: models.LoadedModel, pairs: list[dict], max_length: int | None = None,
                    token_budget: int = 8192) -> dict:
    """Accuracy (ties count half), mean margin, and the length baselines beside it."""
    if not pairs:
        raise ValueError("no evaluation pairs")
    max_length = max_length or models.read_manifest(rm.path).get("max_length", DEFAULT_MAX_LENGTH)
    prompts = [p["prompt"] for p in pairs] * 2
    responses = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    rewards = scoring.score(rm, prompts, responses, max_length, token_budget)
    n = len(pairs)
    margins = [rewards[i] - rewards[n + i] for i in range(n)]
    correct = sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins)
    longer = [len(p["chosen"].strip()) - len(p["rejected"].strip()) for p in pairs]
    return {
        "model": rm.name,
        "revision": rm.revision,
        "n": n,
        "accuracy": correct / n,
        "mean_margin": sum(margins) / n,
        "mean_confidence": sum(1 / (1 + math.exp(-m)) if m > -50 else 0.0 for m in margins) / n,
        "longer_wins_accuracy": sum(1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in longer) / n,
        "shorter_wins_accuracy": sum(1.0 if d < 0 else 0.5 if d == 0 else 0.0 for d in longer) / n,
    }


def evaluate(model: str, pairs: list[dict], device: str = "cpu", max_length: int | None = None) -> dict:
    return evaluate_loaded(models.load_reward_model(model, device=device), pairs, max_length)
