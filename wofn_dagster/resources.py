"""Resources: where files land, the policy, the reward models, how Beam runs, the DuckDB catalog,
and the pipeline's settings.

Each resource's defaults come from the active profile (`WOFN_PROFILE`, `wofn/profiles.py`). Where
an environment variable is set, the field is bound to it as a Dagster `EnvVar` (read when a run
starts, and shown as such in the UI):

    WOFN_HOME             home.root, and the catalog duckdb.database ($WOFN_HOME/wofn.duckdb)
    WOFN_POLICY           policy.model            WOFN_POLICY_DTYPE    policy.dtype
    WOFN_SAMPLING_ENGINE  policy.engine
    WOFN_RM_BACKBONE      reward_models.backbone  WOFN_TEACHER         reward_models.teacher
    WOFN_SCORE_DTYPE      reward_models.score_dtype
    WOFN_BEAM_RUNNER      beam_runner.runner      WOFN_BEAM_OPTIONS    beam_runner.pipeline_options
                                                  (one string, split like a shell command line)
"""

import os
import shlex
from pathlib import Path
from typing import Optional

from dagster import ConfigurableResource, EnvVar
from dagster_duckdb import DuckDBResource
from pydantic import Field, field_validator

from wofn import profiles, reward_head, stages
from wofn.paths import WofnHome
from wofn.prompt_sources import check_prompt_sources
from wofn.pairs import check_confidence_measure


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


class PolicyResource(ConfigurableResource):
    """The policy LM that samples the N candidates of each prompt."""

    model: str = Field(description="policy: shipped name (smollm2-135m-instruct, tiny-llama), local folder, or HF causal-LM id ($WOFN_POLICY)")
    dtype: str = Field(description="policy weights dtype: float32, bfloat16 or float16 ($WOFN_POLICY_DTYPE)")
    engine: str = Field(description="'torch' (wofn's batched sampler, CPU or GPU) or 'vllm' (GPU workers with vllm installed) ($WOFN_SAMPLING_ENGINE)")


class RewardModelResource(ConfigurableResource):
    """The reward models: the backbone base and students start from, the teacher kind, how candidates are scored."""

    backbone: str = Field(description="reward-model backbone: shipped name (minilm-l6, tiny-bert), folder or HF id ($WOFN_RM_BACKBONE)")
    teacher: str = Field(description="'pointwise' (Bradley-Terry scalar RM) or 'pairwise' (P(y1 > y2 | x) model; best/worst of N by knockout tournaments) ($WOFN_TEACHER)")
    score_dtype: str = Field(description="reward-model weights dtype when scoring candidates: float32, bfloat16 (about 2.5x faster on CPUs with bf16 matmul) or float16 ($WOFN_SCORE_DTYPE)")
    score_batch_size: int = Field(description="candidates per reward-model inference call")


class WofnSettings(ConfigurableResource):
    """Everything a West-of-N run is made of. Defaults come from the active profile ($WOFN_PROFILE)."""

    profile: str = Field(description="name of the preset these defaults came from")
    human_pairs: str = Field(description="D_L: Parquet/JSONL file or folder with prompt, chosen, rejected")
    eval_pairs: str = Field(description="held-out human pairs for evaluation (same columns)")
    unlabeled_prompts: str = Field(description="D_U: the profile's prompt batch, a Parquet/JSONL file or folder with a prompt column; its name (without suffix) is the batch key. New batches arrive as files in $WOFN_HOME/inbox")
    max_human_pairs: Optional[int] = Field(description="use the first K human pairs (null = all)")
    max_eval_pairs: Optional[int] = Field(description="use the first K evaluation pairs (null = all)")
    max_prompts: Optional[int] = Field(description="sample K prompts per prompt batch, a stable pseudo-random subset by prompt_id (null = all)")
    prompt_sources: list[str] = Field(description="where the profile's prompt batch draws prompts from, deduplicated by prompt_id (first wins, in this order): 'unlabeled' (the unlabeled_prompts file), 'human_pairs' (the prompts of the human training pairs), 'earlier_turns' (each earlier turn of those multi-turn prompts, cut just after an 'Assistant:' turn); prompts of eval_pairs are left out of the batch. Inbox batches read their own file only")
    extra_human_pairs: Optional[str] = Field(description="extra pairs added to the human pairs that base and student reward models train on (e.g. data/uf_train.parquet): a Parquet/JSONL file or folder with prompt, chosen, rejected (null = none); evaluation pairs are unchanged")
    max_extra_human_pairs: Optional[int] = Field(description="use the first K extra_human_pairs (null = all)")
    n: int = Field(description="N: responses sampled per prompt")
    max_new_tokens: int = Field(description="generation cap per response")
    temperature: float = Field(description="sampling temperature (the paper: ~0.7)")
    top_p: float = Field(description="nucleus sampling; 1.0 = off")
    seed: int = Field(description="global seed for sampling and training")
    sample_batch_size: int = Field(description="prompts per generation batch")
    rm_max_length: int = Field(description="tokens per (prompt, response) for the RM, cut from the left")
    rm_epochs: float = Field(description="training epochs for base and student RMs")
    rm_batch_size: int = Field(description="pairs per RM optimizer step")
    rm_learning_rate: float = Field(description="AdamW peak learning rate (default profile 1e-4: the best validation accuracy at its cost in a sweep of 40 recipes x 5 seeds, docs/results_teacher.md)")
    rm_warmup_ratio: float = Field(description="share of the RM training steps with linear warmup, then linear decay to 0, in [0, 1)")
    rm_head: str = Field(description="reward head on the RM backbone (wofn/reward_head.py): 'auto' (mean pooling for sentence-transformer encoders such as all-MiniLM-L6-v2, which were trained for it; transformers' own head otherwise, i.e. the last real token for decoders), 'mean', 'last', or 'hf' (AutoModelForSequenceClassification's head: BERT's pooler, a decoder's last token; the default profile's: mean pooling matched it only at 4 epochs and 256 tokens, docs/results_teacher.md); stored in the model folder")
    rm_bf16: bool = Field(description="bfloat16 autocast in RM training")
    rm_val_fraction: float = Field(description="share of the human pairs held out to pick the best checkpoint")
    teacher_members: int = Field(description="K base reward models trained with seeds seed .. seed+K-1 on one validation split; K > 1 makes the teacher an ensemble (wofn/reward_ensemble.py): its reward is their mean, candidate_scores.member_rewards holds each member's, and each pair's agreement (the share of members ranking it the same way) can rank the confidence filter (confidence_measure: agreement). Costs K base trainings and K scorings; pointwise teachers only; students then start from the backbone")
    confidence_measure: str = Field(description="what the confidence filter (confidence_quantile) and length_balance rank pairs by: 'margin' (sigmoid(r+ - r-), the paper's) or 'agreement' (a teacher ensemble's agreement, then sigmoid(r+ - r-) among equal agreements; needs teacher_members >= 2)")
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
    length_control: str = Field(description="what the strategy ranks candidates by (sql/length_control/; pointwise teachers only): 'none' (the teacher's rewards), 'residual' (rewards minus a least-squares fit of reward on length over all candidates), 'residual_per_prompt' (one fit per prompt), 'band' (only candidates within length_band of the best candidate's length; the default profile's, with length_balance: docs/results_length.md); a pairwise teacher needs 'none'")
    length_band: float = Field(description="length_control 'band': keep candidates with best_len * (1 - band) <= num_tokens <= best_len * (1 + band), band >= 0 (0 = the same length only)")
    length_balance: bool = Field(description="after the filters, keep as many chosen-longer as chosen-shorter pairs (the most confident of each) plus every equal-length pair (sql/length_control/balance_pairs.sql); on in the default profile")
    max_accuracy_drop: float = Field(description="asset check student_not_worse_than_base warns when the student's eval accuracy is below the base's by more than this (0.02 = 2 points)")
    teacher_min_length_balanced_accuracy: float = Field(description="asset check teacher_learns_preference fails when the base RM's length-balanced accuracy on its validation split is at most this (0.52: a length-only judge scores 0.50); West-of-N would then distil little more than length")
    teacher_gate: str = Field(description="what a failed teacher_learns_preference does: 'warn' (the run goes on) or 'block' (nothing downstream of base_reward_model runs in that run)")
    high_confidence_fraction: float = Field(description="evaluation: share of pairs, most confident first, for high-confidence accuracy")
    torch_threads: int = Field(description="torch threads per step; 0 = all cores")
    device: str = Field(description="torch device for sampling, scoring and training (cpu, cuda)")
    allow_pickle_weights: bool = Field(default=False, description="load pickle (*.bin) checkpoints in the Beam jobs; they can run code when loaded, so only for files you trust (default: safetensors only)")

    @field_validator("prompt_sources")
    @classmethod
    def _known_prompt_sources(cls, value: list[str]) -> list[str]:
        check_prompt_sources(value)
        return value

    @field_validator("teacher_gate")
    @classmethod
    def _known_gate(cls, value: str) -> str:
        if value not in ("warn", "block"):
            raise ValueError(f"teacher_gate must be 'warn' or 'block', got {value!r}")
        return value

    @field_validator("teacher_members")
    @classmethod
    def _members(cls, value: int) -> int:
        if not 1 <= value <= 64:
            raise ValueError(f"teacher_members must be in [1, 64], got {value!r}")
        return value

    @field_validator("confidence_measure")
    @classmethod
    def _known_measure(cls, value: str) -> str:
        check_confidence_measure(value)
        return value

    @field_validator("rm_head")
    @classmethod
    def _known_head(cls, value: str) -> str:
        if value not in reward_head.HEADS:
            raise ValueError(f"rm_head must be one of {', '.join(reward_head.HEADS)}, got {value!r}")
        return value

    @classmethod
    def from_profile(cls, name: Optional[str] = None, **overrides) -> "WofnSettings":
        """The profile's settings (default: the active one), with `overrides`; resource-owned keys are ignored."""
        name, values = profiles.active() if name is None else (name, dict(profiles.PROFILES[name]))
        values = {**values, **overrides}
        return cls(profile=name, **{k: v for k, v in values.items() if k not in _RESOURCE_FIELDS})

    def threads(self) -> int:
        return stages.threads({"torch_threads": self.torch_threads})


# Profile keys that belong to a resource other than `settings`: key -> (resource key, field, env var).
_RESOURCE_FIELDS = {
    "policy": ("policy", "model", "WOFN_POLICY"),
    "policy_dtype": ("policy", "dtype", "WOFN_POLICY_DTYPE"),
    "sampling_engine": ("policy", "engine", "WOFN_SAMPLING_ENGINE"),
    "rm_backbone": ("reward_models", "backbone", "WOFN_RM_BACKBONE"),
    "teacher": ("reward_models", "teacher", "WOFN_TEACHER"),
    "score_dtype": ("reward_models", "score_dtype", "WOFN_SCORE_DTYPE"),
    "score_batch_size": ("reward_models", "score_batch_size", None),
}


def profile_values(settings: WofnSettings, policy: Optional["PolicyResource"] = None,
                   reward_models: Optional["RewardModelResource"] = None) -> dict:
    """The settings as the core's stages take them (`wofn.stages`): a mapping of the profile's keys,
    with the policy's and reward models' keys taken from those resources when given."""
    values = {name: getattr(settings, name) for name in type(settings).model_fields}
    owners = {"policy": policy, "reward_models": reward_models}
    for key, (resource, field, _) in _RESOURCE_FIELDS.items():
        if owners[resource] is not None:
            values[key] = getattr(owners[resource], field)
    return values


def _env_or(name: Optional[str], default):
    """The field bound to environment variable `name` when it is set (a Dagster EnvVar), else `default`."""
    return EnvVar(name) if name and os.environ.get(name) else default


def wofn_resources(home: Optional[str] = None, profile: Optional[str] = None, **overrides) -> dict:
    """Every resource of the pipeline, from the profile (default: $WOFN_PROFILE), the environment
    and `overrides` (profile keys, e.g. teacher="pairwise"; an override wins over the environment).
    A pairwise teacher (override or $WOFN_TEACHER) sets length_control "none" unless it is overridden too.

    `home` defaults to $WOFN_HOME, else `.wofn`; the DuckDB catalog is `<home>/wofn.duckdb`.
    """
    root = str(Path(home or os.environ.get("WOFN_HOME", ".wofn")).resolve())
    name, values = profiles.active() if profile is None else (profile, dict(profiles.PROFILES[profile]))
    teacher_env = _RESOURCE_FIELDS["teacher"][2]  # the teacher as the loop below resolves it
    teacher = overrides["teacher"] if "teacher" in overrides else os.environ.get(teacher_env) or values["teacher"]
    if teacher == "pairwise" and "length_control" not in overrides:
        # the profile's length band needs a reward per candidate; tournaments give none
        overrides = {**overrides, "length_control": "none"}
    values = {**values, **overrides}
    owned: dict[str, dict] = {"policy": {}, "reward_models": {}}
    for key, (resource, field, env) in _RESOURCE_FIELDS.items():
        owned[resource][field] = values[key] if key in overrides else _env_or(env, values[key])
    options = os.environ.get("WOFN_BEAM_OPTIONS")
    return {
        "settings": WofnSettings.from_profile(name, **overrides),
        "home": WofnHomeResource(root=root),
        "policy": PolicyResource(**owned["policy"]),
        "reward_models": RewardModelResource(**owned["reward_models"]),
        "beam_runner": BeamRunnerResource(runner=_env_or("WOFN_BEAM_RUNNER", "DirectRunner"),
                                          pipeline_options=shlex.split(options) if options else []),
        "duckdb": DuckDBResource(database=str(Path(root) / "wofn.duckdb")),
    }
