"""Named presets for a whole pipeline run, as `wofn.settings.Settings`; `WOFN_PROFILE` picks one
(default: `default`). What each setting means, and why the default profile has its values, is in
`wofn/settings.py` (and docs/settings.md).

- `default`: SmolLM2-135M-Instruct policy, all-MiniLM-L6-v2 reward models, the shipped HH data,
  256 unlabeled prompts x N=8. Sized to finish in about 20 minutes on a 2-core CPU machine;
  raise `max_prompts` (null = all), `n`, `rm_epochs`, `rm_max_length` on real hardware.
- `tiny`: tiny random models built from configs with the real tokenizers, 24 prompts, N=4, a
  few dozen human pairs. For tests and smoke runs (under 2 minutes).
- `gpu`: a GPU node: bf16, N=16, 256 new tokens, every prompt (`max_prompts: null`), larger
  batches; the policy and reward model are Hugging Face ids (downloaded once into the HF cache;
  a local folder works the same): Qwen2.5-1.5B-Instruct samples, and the base reward model
  starts from Skywork-Reward-V2-Qwen3-1.7B (a public 1.7B reward model, transformers' head). One
  Beam worker and one model copy per GPU of the node (`device: cuda`, `gpus: 0` = all).
  Point `unlabeled_prompts` / `human_pairs` at your own data for a real run.
"""

from __future__ import annotations

import os

from wofn.settings import Settings

DEFAULT = Settings()

TINY = DEFAULT.replace(
    max_human_pairs=64,
    max_eval_pairs=48,
    max_prompts=24,
    policy="tiny-llama",
    policy_dtype="float32",
    score_dtype="float32",
    n=4,
    max_new_tokens=12,
    rm_backbone="tiny-bert",
    rm_max_length=96,
    rm_epochs=1.0,
    rm_learning_rate=1e-3,
    rm_bf16=False,
    confidence_quantile=0.25,
    logprob_quantile=0.0,
    rounds=2,
)

GPU = DEFAULT.replace(
    device="cuda",
    gpus=0,
    max_prompts=None,
    policy="Qwen/Qwen2.5-1.5B-Instruct",
    policy_dtype="bfloat16",
    score_dtype="bfloat16",
    rm_bf16=True,
    n=16,
    max_new_tokens=256,
    sample_batch_size=32,
    sample_slots=512,
    score_batch_size=256,
    rm_backbone="Skywork/Skywork-Reward-V2-Qwen3-1.7B",
    rm_head="hf",
    rm_max_length=1024,
    rm_epochs=1.0,
    rm_batch_size=32,
    rm_learning_rate=2e-6,
)

PROFILES = {"default": DEFAULT, "tiny": TINY, "gpu": GPU}


def get(name: str) -> Settings:
    if name not in PROFILES:
        raise ValueError(f"profile {name!r}: expected one of {sorted(PROFILES)}")
    return PROFILES[name]


def active() -> tuple[str, Settings]:
    """The profile `WOFN_PROFILE` names (default: `default`) and its settings."""
    name = os.environ.get("WOFN_PROFILE", "default")
    if name not in PROFILES:
        raise ValueError(f"WOFN_PROFILE={name!r}: expected one of {sorted(PROFILES)}")
    return name, PROFILES[name]
