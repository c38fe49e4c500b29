"""Shared fixtures: tiny real models (random weights, real tokenizers) and small real data."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from wofn import data, models
from wofn.paths import DATA_DIR


@pytest.fixture(scope="session")
def tiny_policy() -> models.LoadedModel:
    return models.load_policy(models.TINY_LLAMA)


@pytest.fixture(scope="session")
def tiny_rm() -> models.LoadedModel:
    return models.load_reward_model(models.TINY_BERT)


@pytest.fixture()
def prompts_file(tmp_path) -> Path:
    """Five real unlabeled HH prompts in the `prompts` table schema."""
    path = tmp_path / "prompts.parquet"
    pq.write_table(data.load_prompts(DATA_DIR / "prompts_unlabeled.parquet", limit=5), path)
    return path


def make_toy_pairs(n: int, seed: int) -> list[dict]:
    """Chosen answers are polite, rejected ones rude: separable from the response alone."""
    rng = random.Random(seed)
    topics = ["bread", "taxes", "the weather", "python", "music", "a car", "my garden", "chess"]
    good = ["Sure, happy to help with that.", "Of course, here is a careful answer.", "Thanks for asking, gladly."]
    bad = ["No. Go away.", "That is stupid, figure it out.", "Whatever, not my problem."]
    pairs = []
    for _ in range(n):
        prompt = f"\n\nHuman: Can you tell me about {rng.choice(topics)}?\n\nAssistant:"
        pairs.append({"prompt": prompt, "chosen": " " + rng.choice(good), "rejected": " " + rng.choice(bad)})
    return pairs
