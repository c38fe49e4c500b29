"""The pipeline's stage parameters and steps, defined once.

The Dagster assets (`wofn_dagster.assets`), the rounds asset, the experiment runner
(`wofn.experiment.runner`) and the benchmark (`bench/run.py`) all run the same stages; each of
them calls these functions instead of writing the stage out again. Settings come in one shape,
`wofn.settings.Settings` (the Dagster resources give it with `wofn_dagster.resources.run_settings`,
an experiment has it as `Experiment.settings`).

    train_config(s, seed)            the TrainConfig of base and student reward models
    sampling_argv(s, ...)            the sampling Beam job's arguments
    scoring_argv(s, ...)             the scoring Beam job's arguments
    filter_pairs(s, pairs_dir, ...)  confidence / likelihood / margin / length filters, the funnel,
                                     then the length balance: what a student trains on
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from wofn import models, pairs, training
from wofn.settings import Settings


def rm_bf16(s: Settings) -> bool:
    """Whether reward-model training runs in bf16 autocast: the setting, or (null) where the device
    computes bf16 natively."""
    return models.native_bf16(s.device) if s.rm_bf16 is None else s.rm_bf16


def train_config(s: Settings, seed: int | None = None, **overrides) -> training.TrainConfig:
    """The reward-model training recipe of the settings (`seed`: default the settings' own;
    `overrides`: other TrainConfig fields, e.g. a benchmark's epochs)."""
    recipe = {name: getattr(s, setting) for name, setting in training.SETTING_FIELDS.items()}
    fields = {**recipe, "head": s.rm_head, "seed": s.seed if seed is None else seed, "bf16": rm_bf16(s)}
    return training.TrainConfig(**{**fields, **overrides})


def _model_options(s: Settings) -> list[str]:
    return ["--device", s.device, "--gpus", str(s.gpus), "--torch-threads", str(s.threads()),
            *(["--allow-pickle"] if s.allow_pickle_weights else [])]


def sampling_argv(s: Settings, prompts: Path | str, output: Path | str, errors: Path | str,
                  runner: list[str] | tuple[str, ...] = ("--runner=DirectRunner",)) -> list[str]:
    """`beam_jobs.sample_candidates` arguments: N samples per prompt of `prompts` from the settings'
    policy, into `output` (and the prompts it could not sample into `errors`)."""
    return ["--prompts", str(prompts), "--output", str(output), "--errors", str(errors),
            "--policy", s.policy, "--dtype", s.policy_dtype, "--engine", s.sampling_engine,
            "--n", str(s.n), "--max-new-tokens", str(s.max_new_tokens), "--temperature", str(s.temperature),
            "--top-p", str(s.top_p), "--seed", str(s.seed), "--batch-size", str(s.sample_batch_size),
            "--slots", str(s.sample_slots),
            *_model_options(s), *runner]


def scoring_argv(s: Settings, candidates: Path | str, output: Path | str, errors: Path | str, reward_model: Path | str,
                 runner: list[str] | tuple[str, ...] = ("--runner=DirectRunner",)) -> list[str]:
    """`beam_jobs.score_candidates` arguments: `reward_model` judges every candidate of `candidates`."""
    return ["--candidates", str(candidates), "--output", str(output), "--errors", str(errors),
            "--reward-model", str(reward_model), "--batch-size", str(s.score_batch_size),
            "--dtype", s.score_dtype, *_model_options(s), *runner]


def filters(s: Settings, teacher_is_ensemble: bool = True) -> dict:
    """The filters' arguments (`wofn.pairs.filter_pairs`). A teacher that is not an ensemble (the
    student teaching round k >= 2) gives no agreement: it is filtered by the margin."""
    return {"confidence_quantile": s.confidence_quantile, "logprob_quantile": s.logprob_quantile,
            "likelihood": s.likelihood, "min_margin": s.min_margin, "max_tokens": s.max_pair_tokens,
            "confidence_measure": s.confidence_measure if teacher_is_ensemble else "margin"}


@dataclass
class FilteredPairs:
    table: pa.Table  # wofn.schemas.PAIRS: the student trains on (pairs.STATS_COLUMNS only, when written out)
    funnel: pa.Table  # wofn.schemas.PAIR_FUNNEL: every step, the length balance last when on
    steps: dict  # pairs kept per step, by name (pairs.filter_pairs' keys, and "length_balance")
    filters: dict  # the filter arguments applied
    before_balance: dict | None  # pairs.pair_stats of the filtered pairs, when they were then balanced


def filter_pairs(s: Settings, pairs_dir: Path, strategy: str = "west_of_n", pair_seed: int | None = None,
                 teacher_is_ensemble: bool = True, out_dir: Path | None = None) -> FilteredPairs:
    """The selected pairs in `pairs_dir` through the filters (sql/filter_pairs.sql), with the funnel
    (sql/pair_funnel.sql, labelled with `strategy` and `pair_seed`), then, with `length_balance`, as
    many chosen-longer as chosen-shorter pairs (sql/length_control/balance_pairs.sql).

    With `out_dir`, the pairs are written there (`pairs.FILTERED_FILE`), streamed, and `table` holds
    only pairs.STATS_COLUMNS of them (what a table of millions of pairs needs in memory); without,
    `table` is every column."""
    applied = filters(s, teacher_is_ensemble)
    with tempfile.TemporaryDirectory(prefix="wofn-filtered-") as tmp:
        into = Path(out_dir) if out_dir is not None else Path(tmp)
        funnel, before = pairs.write_filtered(pairs_dir, into, **applied, strategy=strategy, pair_seed=pair_seed,
                                              balance=s.length_balance)
        written = into / pairs.FILTERED_FILE
        table = pq.read_table(written, columns=pairs.STATS_COLUMNS if out_dir is not None else None)
    steps = pairs.funnel_steps(funnel, applied["min_margin"] is not None, applied["max_tokens"] is not None)
    if s.length_balance:
        steps = {**steps, "length_balance": table.num_rows}
    return FilteredPairs(table, funnel, steps, applied, before)
