"""Named presets for a whole pipeline run; `WOFN_PROFILE` picks one (default: `default`).

The values are plain data; their types and meanings are declared once, by the Dagster settings
resource (`wofn_dagster.resources.WofnSettings`), where each field has its help text.

- `default`: SmolLM2-135M-Instruct policy, all-MiniLM-L6-v2 reward models, the shipped HH data,
  256 unlabeled prompts x N=8. Sized to finish in about 20 minutes on a 2-core CPU machine;
  raise `max_prompts` (null = all), `n`, `rm_epochs`, `rm_max_length` on real hardware.
- `tiny`: tiny random models built from configs with the real tokenizers, 24 prompts, N=4, a
  few dozen human pairs. For tests and smoke runs (under 2 minutes).
"""

from __future__ import annotations

import os

from wofn.paths import DATA_DIR

DEFAULT = {
    "human_pairs": str(DATA_DIR / "hh_train.parquet"),
    "eval_pairs": str(DATA_DIR / "hh_test.parquet"),
    "unlabeled_prompts": str(DATA_DIR / "prompts_unlabeled.parquet"),
    "max_human_pairs": None,
    "max_eval_pairs": None,
    "max_prompts": 256,
    "prompt_sources": ["unlabeled"],
    "extra_human_pairs": None,
    "max_extra_human_pairs": None,
    "policy": "smollm2-135m-instruct",
    "policy_dtype": "bfloat16",
    "sampling_engine": "torch",
    "n": 8,
    "max_new_tokens": 64,
    "temperature": 0.7,
    "top_p": 1.0,
    "seed": 0,
    "sample_batch_size": 8,
    "rm_backbone": "minilm-l6",
    "rm_max_length": 128,
    "rm_epochs": 2.0,
    "rm_batch_size": 16,
    # The RM recipe: the best validation accuracy among the recipes that cost what 2 epochs at 128 tokens
    # cost (make run's budget) in a sweep of 40 recipes x 5 seeds (docs/results_teacher.md): lr 1e-4 took
    # the teacher from 59.8 to 65.8% validation accuracy (+5.9 [+0.5, +11.7]) and its hh_test margin from
    # +0.02 to +0.21. Mean pooling ("auto"/"mean" on MiniLM) matched it only at 4 epochs and 256 tokens.
    "rm_learning_rate": 1e-4,
    "rm_warmup_ratio": 0.1,
    "rm_head": "hf",
    "rm_bf16": True,
    "teacher": "pointwise",
    # K > 1: the teacher is K base RMs (seeds seed .. seed+K-1, one validation split), its reward their
    # mean and each pair's agreement a second confidence (wofn/reward_ensemble.py); K times the base cost
    "teacher_members": 1,
    "rm_val_fraction": 0.1,
    "student_init": "backbone",
    "rounds": 1,
    "synthetic_ratio": 1.0,
    "strategy": "west_of_n",
    "pair_seed": 0,
    "confidence_quantile": 0.5,
    "confidence_measure": "margin",
    "logprob_quantile": 0.1,
    "likelihood": "mean",
    "min_margin": None,
    "max_pair_tokens": None,
    # West-of-N within a length band, then as many chosen-longer as chosen-shorter pairs: on the shipped
    # data the paper's plain selection gave pairs 3% / 55% chosen-longer / shorter and students no better
    # than the base on length-balanced accuracy (-0.0 +- 1.6 points, 5 seeds); this gave +2.4 +- 2.3, above
    # the base on every seed (docs/results_length.md). "none" + False is the paper's selection (and what a
    # pairwise teacher needs).
    "length_control": "band",
    "length_band": 0.3,
    "length_balance": True,
    "score_batch_size": 64,
    "score_dtype": "bfloat16",
    "high_confidence_fraction": 0.25,
    "max_accuracy_drop": 0.02,
    # the teacher gate: below this length-balanced validation accuracy the base RM has learned little
    # beyond length, and West-of-N would distil that (asset check teacher_learns_preference)
    "teacher_min_length_balanced_accuracy": 0.52,
    "teacher_gate": "warn",
    "torch_threads": 0,
    "device": "cpu",
}

TINY = {
    **DEFAULT,
    "max_human_pairs": 64,
    "max_eval_pairs": 48,
    "max_prompts": 24,
    "policy": "tiny-llama",
    "policy_dtype": "float32",
    "score_dtype": "float32",
    "n": 4,
    "max_new_tokens": 12,
    "rm_backbone": "tiny-bert",
    "rm_max_length": 96,
    "rm_epochs": 1.0,
    "rm_learning_rate": 1e-3,
    "rm_bf16": False,
    "confidence_quantile": 0.25,
    "logprob_quantile": 0.0,
    "rounds": 2,
}

PROFILES = {"default": DEFAULT, "tiny": TINY}


def active() -> tuple[str, dict]:
    name = os.environ.get("WOFN_PROFILE", "default")
    if name not in PROFILES:
        raise ValueError(f"WOFN_PROFILE={name!r}: expected one of {sorted(PROFILES)}")
    return name, dict(PROFILES[name])
