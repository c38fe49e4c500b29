"""Resources: where files land, how Beam runs, and the pipeline's settings."""

import os
from pathlib import Path
from typing import Optional

from dagster import ConfigurableResource
from pydantic import Field

from wofn import profiles
from wofn.paths import WofnHome


class WofnHomeResource(ConfigurableResource):
    """The data root: tables, models and the DuckDB catalog live under it."""

    root: str = Field(description="folder for tables/, models/ and wofn.duckdb ($WOFN_HOME, default .wofn)")

    @property
    def home(self) -> WofnHome:
        return WofnHome(Path(self.root).resolve())


class BeamRunnerResource(ConfigurableResource):
    """How the Beam jobs run: runner name and extra pipeline options."""

    runner: str = Field(default="DirectRunner", description="Beam runner, e.g. DirectRunner, DaskRunner, DataflowRunner")
    pipeline_options: list[str] = Field(
        default_factory=list,
        description="extra Beam options, e.g. ['--direct_running_mode=multi_processing', '--direct_num_workers=2']",
    )

    def args(self) -> list[str]:
        return [f"--runner={self.runner}", *self.pipeline_options]


class WofnSettings(ConfigurableResource):
    """Everything a West-of-N run is made of. Defaults come from the active profile ($WOFN_PROFILE)."""

    profile: str = Field(description="name of the preset these defaults came from")
    human_pairs: str = Field(description="D_L: Parquet/JSONL file or folder with prompt, chosen, rejected")
    eval_pairs: str = Field(description="held-out human pairs for evaluation (same columns)")
    unlabeled_prompts: str = Field(description="D_U: Parquet/JSONL file or folder with a prompt column")
    max_human_pairs: Optional[int] = Field(description="use the first K human pairs (null = all)")
    max_eval_pairs: Optional[int] = Field(description="use the first K evaluation pairs (null = all)")
    max_prompts: Optional[int] = Field(description="sample K prompts, a stable pseudo-random subset by prompt_id (null = all)")
    policy: str = Field(description="policy: shipped name (smollm2-135m-instruct), local folder, or HF causal-LM id")
    policy_dtype: str = Field(description="policy weights dtype: float32, bfloat16 or float16")
    sampling_engine: str = Field(description="'torch' (wofn's batched sampler, CPU or GPU) or 'vllm' (GPU workers with vllm installed)")
    n: int = Field(description="N: responses sampled per prompt")
    max_new_tokens: int = Field(description="generation cap per response")
    temperature: float = Field(description="sampling temperature (the paper: ~0.7)")
    top_p: float = Field(description="nucleus sampling; 1.0 = off")
    seed: int = Field(description="global seed for sampling and training")
    sample_batch_size: int = Field(description="prompts per generation batch")
    rm_backbone: str = Field(description="reward-model backbone: shipped name (minilm-l6), folder or HF id")
    rm_max_length: int = Field(description="tokens per (prompt, response) for the RM, cut from the left")
    rm_epochs: float = Field(description="training epochs for base and student RMs")
    rm_batch_size: int = Field(description="pairs per RM optimizer step")
    rm_learning_rate: float = Field(description="AdamW peak learning rate")
    rm_bf16: bool = Field(description="bfloat16 autocast in RM training")
    teacher: str = Field(description="'pointwise' (Bradley-Terry scalar RM) or 'pairwise' (P(y1 > y2 | x) model; best/worst of N by knockout tournaments)")
    rm_val_fraction: float = Field(description="share of the human pairs held out to pick the best checkpoint")
    rounds: int = Field(description="West-of-N rounds; round k >= 2 uses round k-1's student as teacher (1 = student_reward_model only)")
    student_init: str = Field(description="'backbone' (the paper) or 'teacher' (continue from the round's teacher): where each student starts")
    synthetic_ratio: float = Field(description="synthetic pairs per human pair in the student's data (1.0 = the paper's 1:1), capped by what the filters kept")
    strategy: str = Field(description="pair selection, one sql/strategies/<name>.sql: 'west_of_n' (best vs worst, the method), or the paper's baselines 'random_pair' (two random candidates, teacher-labelled), 'best_vs_random', 'worst_vs_random'; a pairwise teacher supports only west_of_n")
    pair_seed: int = Field(description="seed of the random strategies' hash-based draws (reruns give the same pairs); unused by west_of_n")
    confidence_quantile: float = Field(description="keep pairs with confidence sigmoid(r+ - r-) >= this quantile of confidence, in [0, 1]")
    logprob_quantile: float = Field(description="keep pairs whose both responses' likelihood >= this quantile of the pooled likelihoods, in [0, 1]")
    likelihood: str = Field(description="likelihood measure for logprob_quantile: 'mean' (log-prob per token) or 'sum' (summed log-prob, penalises length)")
    min_margin: Optional[float] = Field(description="keep pairs with margin r+ - r- >= this (reward units); null = off")
    max_pair_tokens: Optional[int] = Field(description="keep pairs whose both responses have at most this many policy tokens; null = off")
    high_confidence_fraction: float = Field(description="evaluation: share of pairs, most confident first, for high-confidence accuracy")
    score_batch_size: int = Field(description="candidates per reward-model inference call")
    score_dtype: str = Field(description="reward-model weights dtype when scoring candidates: float32, bfloat16 (about 2.5x faster on CPUs with bf16 matmul) or float16")
    torch_threads: int = Field(description="torch threads per step; 0 = all cores")
    device: str = Field(description="torch device for sampling, scoring and training (cpu, cuda)")
    allow_pickle_weights: bool = Field(default=False, description="load pickle (*.bin) checkpoints in the Beam jobs; they can run code when loaded, so only for files you trust (default: safetensors only)")

    @classmethod
    def from_profile(cls) -> "WofnSettings":
        name, values = profiles.active()
        return cls(profile=name, **values)

    def threads(self) -> int:
        return self.torch_threads if self.torch_threads > 0 else (os.cpu_count() or 1)
