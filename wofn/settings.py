"""Every setting of a West-of-N run, declared once: its type, default, stage, help and rules.

`Settings` is the one shape settings take. The profiles (`wofn.profiles`) are instances of it; the
Dagster resources (`wofn_dagster.resources`) are generated from its fields and hand the assets a
`Settings` back (`run_settings`); an experiment's `settings:` and `tune:` are checked by building
one; the stages (`wofn.stages`) read its attributes; `docs/settings.md` is generated from it
(`wofn settings --markdown`, checked by tests/core/test_settings.py).

A value that breaks a rule raises `SettingsError` naming the setting:

    >>> Settings(n=1)
    Traceback (most recent call last):
    wofn.settings.SettingsError: n must be an integer >= 2 (a pair needs two candidates), got 1

Each field's metadata: `group` (the stage it belongs to, GROUPS), `help`, and where the Dagster
resources keep it when that is not the `settings` resource (`resource`: (resource key, field),
`env`: the environment variable that field reads).
"""

from __future__ import annotations

import math
import os
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cache

from wofn import reward_head, schemas
from wofn.paths import DATA_DIR
from wofn.prompt_sources import check_prompt_sources

GROUPS = {
    "data": "Data: human pairs, evaluation pairs and prompts",
    "sampling": "Sampling: the policy and its N candidates per prompt",
    "scoring": "Scoring: the teacher that judges the candidates",
    "pairs": "Pairs: selection, filters and length control",
    "training": "Training: base and student reward models",
    "evaluation": "Evaluation and gates",
    "runtime": "Runtime: seeds, threads, devices, trust",
}
DTYPES = ("auto", "float32", "bfloat16", "float16")  # auto: bfloat16 where the device computes it natively
ENGINES = ("torch", "vllm")
TEACHERS = ("pointwise", "pairwise")
STUDENT_INITS = ("backbone", "teacher")
TEACHER_GATES = ("warn", "block")


LIKELIHOOD_MEASURES = ("mean", "sum")
# What the confidence filter and the length balance rank pairs by: "margin" = confidence =
# sigmoid(r+ - r-) (the paper's); "agreement" = an ensemble teacher's agreement (the share of its
# members that rank the pair the same way, wofn.reward_ensemble), then confidence.
CONFIDENCE_MEASURES = ("margin", "agreement")
# What the strategies rank candidates by: "none" = the teacher's rewards; "residual" = the rewards
# minus a least-squares fit on length over the run ("residual_per_prompt": one fit per prompt);
# "band" = only the candidates within length_band of their prompt's best candidate's length;
# "finished" = only the candidates that ended with EOS (none cut at max_new_tokens).
LENGTH_CONTROLS = ("none", "residual", "residual_per_prompt", "band", "finished")


class SettingsError(ValueError):
    """A setting (or a combination of settings) wofn cannot run; the message names the setting."""


def check_strategy(strategy: str, pairwise: bool = False) -> None:
    """Raise ValueError unless `strategy` is known (and, with a pairwise teacher, west_of_n)."""
    if strategy not in schemas.STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(schemas.STRATEGIES)}; got {strategy!r}")
    if pairwise and strategy != "west_of_n":
        raise ValueError(
            f"strategy {strategy!r} needs a reward per candidate, but the teacher is pairwise (it only finds "
            "the best and worst of N by knockout tournaments); use strategy 'west_of_n' or a pointwise teacher")


def check_confidence_measure(confidence_measure: str) -> None:
    if confidence_measure not in CONFIDENCE_MEASURES:
        raise ValueError(f"confidence_measure must be 'margin' (sigmoid of the reward margin) or 'agreement' "
                         f"(a teacher ensemble's agreement, then the margin), got {confidence_measure!r}")


def check_length_control(length_control: str, length_band: float = 0.3, pairwise: bool = False) -> None:
    """Raise ValueError naming the setting unless `length_control` is one of LENGTH_CONTROLS,
    `length_band` is a number >= 0, and (with a pairwise teacher) length_control is "none"."""
    if length_control not in LENGTH_CONTROLS:
        raise ValueError(f"length_control must be one of {', '.join(LENGTH_CONTROLS)}; got {length_control!r}")
    if (not isinstance(length_band, (int, float)) or isinstance(length_band, bool) or math.isnan(length_band)
            or length_band < 0):
        raise ValueError(f"length_band must be a number >= 0 (0.3 = within 30% of the best candidate's length, "
                         f"0 = the same length only), got {length_band!r}")
    if pairwise and length_control != "none":
        raise ValueError(
            f"length_control {length_control!r} needs a reward per candidate, but the teacher is pairwise (it only "
            "finds the best and worst of N by knockout tournaments); set length_control to 'none' (length_balance "
            "still balances the pairs) or use a pointwise teacher")


def _setting(default, group: str, help: str, *, resource: tuple[str, str] | None = None, env: str | None = None):
    return field(default=default, metadata={"group": group, "help": help, "resource": resource, "env": env})


@dataclass(frozen=True)
class Settings:
    """A whole run's settings. The defaults are the `default` profile's."""

    # -- data
    human_pairs: str = _setting(str(DATA_DIR / "hh_train.parquet"), "data",
                                "D_L: Parquet/JSONL file or folder with prompt, chosen, rejected")
    eval_pairs: str = _setting(str(DATA_DIR / "hh_test.parquet"), "data",
                               "held-out human pairs for evaluation (same columns)")
    unlabeled_prompts: str = _setting(
        str(DATA_DIR / "prompts_unlabeled.parquet"), "data",
        "D_U: the profile's prompt batch, a Parquet/JSONL file or folder with a prompt column; its name (without "
        "suffix) is the batch key. New batches arrive as files in $WOFN_HOME/inbox")
    max_human_pairs: typing.Optional[int] = _setting(None, "data", "use the first K human pairs (null = all)")
    max_eval_pairs: typing.Optional[int] = _setting(None, "data", "use the first K evaluation pairs (null = all)")
    max_prompts: typing.Optional[int] = _setting(
        256, "data", "sample K prompts per prompt batch, a stable pseudo-random subset by prompt_id (null = all). "
        "The default profile's 256 x N=8 is sized to finish in about 20 minutes on a 2-core CPU machine")
    prompt_sources: tuple[str, ...] = _setting(
        ("unlabeled",), "data",
        "where the profile's prompt batch draws prompts from, deduplicated by prompt_id (first wins, in this "
        "order): 'unlabeled' (the unlabeled_prompts file), 'human_pairs' (the prompts of the human training "
        "pairs), 'earlier_turns' (each earlier turn of those multi-turn prompts, cut just after an 'Assistant:' "
        "turn); prompts of eval_pairs are left out of the batch. Inbox batches read their own file only")
    extra_human_pairs: typing.Optional[str] = _setting(
        None, "data", "extra pairs added to the human pairs that base and student reward models train on (e.g. "
        "data/uf_train.parquet): a Parquet/JSONL file or folder with prompt, chosen, rejected (null = none); "
        "evaluation pairs are unchanged")
    max_extra_human_pairs: typing.Optional[int] = _setting(None, "data",
                                                           "use the first K extra_human_pairs (null = all)")
    human_holdout: float = _setting(
        0.0, "data", "share of the human pairs (chosen by the hash of each pair_id, wofn.data.human_holdout) that "
        "no reward model trains on and that evaluation reports as a second held-out set beside eval_pairs; their "
        "prompts stay out of the prompt batch like eval_pairs' (0 = none)")

    # -- sampling
    policy: str = _setting("smollm2-135m-instruct", "sampling",
                           "policy: shipped name (smollm2-135m-instruct, tiny-llama), local folder, or HF causal-LM id",
                           resource=("policy", "model"), env="WOFN_POLICY")
    policy_dtype: str = _setting("auto", "sampling", "policy weights dtype: 'auto' (bfloat16 on a GPU or CPU that "
                                 "computes it natively, float32 elsewhere, e.g. AVX2-only CPUs, which emulate bf16 "
                                 "~50x slower), float32, bfloat16 or float16",
                                 resource=("policy", "dtype"), env="WOFN_POLICY_DTYPE")
    sampling_engine: str = _setting("torch", "sampling", "'torch' (wofn's batched sampler, CPU or GPU) or 'vllm' "
                                    "(GPU workers with vllm installed)",
                                    resource=("policy", "engine"), env="WOFN_SAMPLING_ENGINE")
    n: int = _setting(8, "sampling", "N: responses sampled per prompt")
    max_new_tokens: int = _setting(64, "sampling", "generation cap per response")
    temperature: float = _setting(0.7, "sampling", "sampling temperature (the paper: ~0.7)")
    top_p: float = _setting(1.0, "sampling", "nucleus sampling; 1.0 = off")
    sample_batch_size: int = _setting(8, "sampling", "prompts per generation batch where the policy decodes in static "
                                      "batches (sample_slots does not apply) and for the vllm engine")
    sample_slots: int = _setting(256, "sampling", "rows (prompt x sample) the torch engine decodes at once: a row that "
                                 "ends hands its slot to the next waiting one (continuous batching). More slots make "
                                 "larger matrix products (2-core CPU, bf16, N=8: 865 generated tokens/s at 256 slots, "
                                 "703 at 64; docs/benchmark.md) and hold more keys and values: about slots x "
                                 "(max_new_tokens + 2 x longest prompt / N) tokens' worth")

    # -- scoring
    teacher: str = _setting("pointwise", "scoring",
                            "'pointwise' (Bradley-Terry scalar RM) or 'pairwise' (P(y1 > y2 | x) model; best/worst "
                            "of N by knockout tournaments; needs length_control 'none', strategy 'west_of_n' and one "
                            "member)", resource=("reward_models", "teacher"), env="WOFN_TEACHER")
    teacher_members: int = _setting(
        1, "scoring", "K base reward models trained with seeds seed .. seed+K-1 on one validation split; K > 1 makes "
        "the teacher an ensemble (wofn/reward_ensemble.py): its reward is their mean, candidate_scores.member_rewards "
        "holds each member's, and each pair's agreement (the share of members ranking it the same way) can rank the "
        "confidence filter (confidence_measure: agreement). Costs K base trainings and K scorings; pointwise "
        "teachers only; students then start from the backbone")
    score_dtype: str = _setting("auto", "scoring", "reward-model weights dtype when scoring candidates: 'auto' "
                                "(bfloat16 where the device computes it natively, about 2.5x faster on such CPUs; "
                                "float32 elsewhere), float32, bfloat16 or float16",
                                resource=("reward_models", "score_dtype"), env="WOFN_SCORE_DTYPE")
    score_batch_size: int = _setting(64, "scoring", "candidates per reward-model inference call",
                                     resource=("reward_models", "score_batch_size"))

    # -- pairs
    strategy: str = _setting(
        "west_of_n", "pairs", "pair selection, a file of sql/strategies/: 'west_of_n' (best vs worst, the method), "
        "or the paper's baselines 'random_pair' (two random candidates, teacher-labelled), 'best_vs_random', "
        "'worst_vs_random' (the three: vs_random.sql); a pairwise teacher supports only west_of_n")
    pair_seed: int = _setting(0, "pairs", "seed of the random strategies' hash-based draws (reruns give the same "
                              "pairs); unused by west_of_n")
    confidence_quantile: float = _setting(0.5, "pairs", "keep pairs with confidence sigmoid(r+ - r-) >= this "
                                          "quantile of confidence, in [0, 1]")
    confidence_measure: str = _setting(
        "margin", "pairs", "what the confidence filter (confidence_quantile) and length_balance rank pairs by: "
        "'margin' (sigmoid(r+ - r-), the paper's) or 'agreement' (a teacher ensemble's agreement, then "
        "sigmoid(r+ - r-) among equal agreements; needs teacher_members >= 2)")
    logprob_quantile: float = _setting(0.1, "pairs", "keep pairs whose both responses' likelihood >= this quantile "
                                       "of the pooled likelihoods, in [0, 1]")
    likelihood: str = _setting("mean", "pairs", "likelihood measure for logprob_quantile: 'mean' (log-prob per "
                               "token) or 'sum' (summed log-prob, penalises length)")
    min_margin: typing.Optional[float] = _setting(None, "pairs", "keep pairs with margin r+ - r- >= this (reward "
                                                  "units); null = off")
    max_pair_tokens: typing.Optional[int] = _setting(None, "pairs", "keep pairs whose both responses have at most "
                                                     "this many policy tokens; null = off")
    length_control: str = _setting(
        "band", "pairs", "what the strategy ranks candidates by (sql/length_control/; pointwise teachers only): "
        "'none' (the teacher's rewards: the paper's selection, and what a pairwise teacher needs), 'residual' "
        "(rewards minus a least-squares fit of reward on length over all candidates), 'residual_per_prompt' (one "
        "fit per prompt), 'band' (only candidates within length_band of the best candidate's length), 'finished' "
        "(only candidates that ended with EOS: none cut at max_new_tokens, whose cut-off last token a reward model "
        "may score for no reason a human shares). The default "
        "profile's band + length_balance: on the shipped data the paper's plain selection gave pairs 3% / 55% "
        "chosen-longer / shorter and students no better than the base on length-balanced accuracy (-0.0 +- 1.6 "
        "points, 5 seeds); band + balance gave +2.4 +- 2.3 (docs/results_length.md)")
    length_band: float = _setting(0.3, "pairs", "length_control 'band': keep candidates with best_len * (1 - band) "
                                  "<= num_tokens <= best_len * (1 + band), band >= 0 (0 = the same length only)")
    length_balance: bool = _setting(True, "pairs", "after the filters, keep as many chosen-longer as chosen-shorter "
                                    "pairs (the most confident of each) plus every equal-length pair "
                                    "(sql/length_control/balance_pairs.sql)")

    # -- training
    rm_backbone: str = _setting("minilm-l6", "training", "reward-model backbone: shipped name (minilm-l6, "
                                "tiny-bert), folder or HF id", resource=("reward_models", "backbone"),
                                env="WOFN_RM_BACKBONE")
    rm_max_length: int = _setting(128, "training", "tokens per (prompt, response) for the RM, cut from the left")
    rm_epochs: float = _setting(2.0, "training", "training epochs for base and student RMs")
    rm_batch_size: int = _setting(16, "training", "pairs per RM optimizer step")
    rm_micro_batch: typing.Optional[int] = _setting(
        None, "training", "pairs per forward and backward pass (null = rm_batch_size): a step's rm_batch_size pairs "
        "go through in pieces of this many, their gradients summed, so the recipe stays the same and the "
        "activations' memory shrinks with it; validation passes take twice this many (SmolLM2-135M as RM at "
        "rm_max_length 384, 16 pairs at once: over 23 GB on a CPU)")
    rm_learning_rate: float = _setting(
        1e-4, "training", "AdamW peak learning rate. The default profile's 1e-4 had the best validation accuracy "
        "among the recipes that cost what 2 epochs at 128 tokens cost, in a sweep of 40 recipes x 5 seeds "
        "(docs/results_teacher.md): it took the teacher from 59.8 to 65.8% validation accuracy (+5.9 [+0.5, "
        "+11.7]) and its hh_test margin from +0.02 to +0.21")
    rm_warmup_ratio: float = _setting(0.1, "training", "share of the RM training steps with linear warmup, then "
                                      "linear decay to 0, in [0, 1)")
    rm_head: str = _setting(
        "hf", "training", "reward head on the RM backbone (wofn/reward_head.py): 'auto' (mean pooling for "
        "sentence-transformer encoders such as all-MiniLM-L6-v2, which were trained for it; transformers' own head "
        "otherwise, i.e. the last real token for decoders), 'mean', 'last', or 'hf' "
        "(AutoModelForSequenceClassification's head: BERT's pooler, a decoder's last token; the default profile's: "
        "mean pooling matched it only at 4 epochs and 256 tokens, docs/results_teacher.md); stored in the model folder")
    rm_bf16: typing.Optional[bool] = _setting(
        None, "training", "bfloat16 autocast in RM training: true, false, or null (auto: on where the device computes "
        "bf16 natively, off on CPUs that emulate it)")
    rm_val_fraction: float = _setting(0.1, "training", "share of the human pairs held out to pick the best "
                                      "checkpoint, in [0, 1)")
    student_init: str = _setting("backbone", "training", "'backbone' (the paper) or 'teacher' (continue from the "
                                 "round's teacher, which must be one model): where each student starts")
    rounds: int = _setting(1, "training", "West-of-N rounds; round k >= 2 uses round k-1's student as teacher "
                           "(1 = student_reward_model only)")
    synthetic_ratio: float = _setting(1.0, "training", "synthetic pairs per human pair in the student's data (1.0 = "
                                      "the paper's 1:1), capped by what the filters kept")

    # -- evaluation
    high_confidence_fraction: float = _setting(0.25, "evaluation", "share of pairs, most confident first, for "
                                               "high-confidence accuracy, in (0, 1]")
    max_accuracy_drop: float = _setting(0.02, "evaluation", "asset check student_not_worse_than_base warns when the "
                                        "student's eval accuracy is below the base's by more than this (0.02 = 2 "
                                        "points)")
    teacher_min_length_balanced_accuracy: float = _setting(
        0.52, "evaluation", "asset check teacher_learns_preference fails when the base RM's length-balanced accuracy "
        "on its validation split is at most this (0.52: a length-only judge scores 0.50; below 0: never); "
        "West-of-N would then distil little more than length")
    teacher_gate: str = _setting("warn", "evaluation", "what a failed teacher_learns_preference does: 'warn' (the "
                                 "run goes on) or 'block' (nothing downstream of base_reward_model runs in that run)")

    # -- runtime
    seed: int = _setting(0, "runtime", "global seed for sampling and training")
    torch_threads: int = _setting(0, "runtime", "torch threads per step; 0 = all cores")
    device: str = _setting("cpu", "runtime", "torch device for sampling, scoring and training (cpu, cuda, cuda:1); "
                           "'cuda' on a node of several GPUs: one Beam worker process per GPU, each with its own "
                           "model copy (see gpus)")
    gpus: int = _setting(0, "runtime", "with device 'cuda': how many of the node's GPUs the Beam jobs spread over, "
                         "one worker process and one model copy each (0 = every visible GPU; the DirectRunner "
                         "then runs in multi_processing mode unless its workers are set in the Beam options)")
    allow_pickle_weights: bool = _setting(False, "runtime", "load pickle (*.bin) checkpoints in the Beam jobs; they "
                                          "can run code when loaded, so only for files you trust (default: "
                                          "safetensors only)")

    def __post_init__(self):
        for f in fields(self):
            object.__setattr__(self, f.name, check_value(f.name, getattr(self, f.name)))
        _check_rules(self)

    def replace(self, **changes) -> "Settings":
        """These settings with `changes` (checked like a new instance; unknown names raise)."""
        check_names(changes)
        return replace(self, **changes)

    def as_dict(self) -> dict:
        """Plain JSON-ready values (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def threads(self) -> int:
        """`torch_threads`, 0 meaning every core."""
        return self.torch_threads if self.torch_threads > 0 else (os.cpu_count() or 1)


def names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(Settings))


def check_names(values, where: str = "") -> None:
    """SettingsError naming the unknown keys of `values` (a mapping or names)."""
    unknown = sorted(set(values) - set(names()))
    if unknown:
        raise SettingsError(f"{where}unknown setting(s) {unknown}; settings are {sorted(names())} (docs/settings.md)")


def from_mapping(values: typing.Mapping, base: Settings | None = None) -> Settings:
    """`base` (default: the default profile's) with `values` (a mapping of setting names, e.g. YAML)."""
    return (base or Settings()).replace(**dict(values))


def setting_help(name: str) -> str:
    return _field(name).metadata["help"]


def setting_default(name: str):
    """The setting's default: the `default` profile's value."""
    return _field(name).default


def owned_by(resource: str) -> dict[str, tuple[str, str | None]]:
    """Settings a Dagster resource other than `settings` holds: setting name -> (its field, env var)."""
    return {f.name: (f.metadata["resource"][1], f.metadata["env"]) for f in fields(Settings)
            if f.metadata["resource"] and f.metadata["resource"][0] == resource}


def type_of(name: str):
    return _types()[name]


def type_name(name: str) -> str:
    tp = _types()[name]
    optional = _optional(tp)
    inner = optional or tp
    text = "list of str" if typing.get_origin(inner) is tuple else inner.__name__
    return f"{text} or null" if optional else text


@cache
def _types() -> dict:
    return typing.get_type_hints(Settings)


def _field(name: str):
    for f in fields(Settings):
        if f.name == name:
            return f
    raise SettingsError(f"unknown setting {name!r} (docs/settings.md)")


def _optional(tp):
    """X for Optional[X], else None."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args:
        return next(a for a in args if a is not type(None))
    return None


def _coerce(name: str, value, tp):
    optional = _optional(tp)
    if optional is not None:
        return None if value is None else _coerce(name, value, optional)
    if typing.get_origin(tp) is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise SettingsError(f"{name} must be a list of strings, got {value!r}")
        if not all(isinstance(v, str) for v in value):
            raise SettingsError(f"{name} must be a list of strings, got {list(value)!r}")
        return tuple(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
        kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[tp]
        raise SettingsError(f"{name} must be {kind}, got {value!r}")
    if tp is float and math.isnan(value):
        raise SettingsError(f"{name} must be a number, got nan")
    return value


def _choice(name: str, allowed: tuple[str, ...]):
    def check(value):
        if value not in allowed:
            raise SettingsError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return check


def _range(name: str, low=None, high=None, *, low_open=False, high_open=False, why: str = ""):
    def check(value):
        if value is None:
            return
        if ((low is not None and (value <= low if low_open else value < low))
                or (high is not None and (value >= high if high_open else value > high))):
            if high is None:
                bound = f"{'>' if low_open else '>='} {low}"
            elif low is None:
                bound = f"{'<' if high_open else '<='} {high}"
            else:
                bound = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
            kind = "an integer" if isinstance(value, int) else "a number"
            raise SettingsError(f"{name} must be {kind} {bound}{why}, got {value!r}")
    return check


_CHECKS = {
    **{name: _range(name, 1) for name in ("max_human_pairs", "max_eval_pairs", "max_prompts", "max_extra_human_pairs",
                                          "max_new_tokens", "sample_batch_size", "sample_slots", "score_batch_size",
                                          "rm_max_length", "rm_batch_size", "rm_micro_batch", "rounds",
                                          "max_pair_tokens")},
    "prompt_sources": check_prompt_sources,
    "policy_dtype": _choice("policy_dtype", DTYPES),
    "score_dtype": _choice("score_dtype", DTYPES),
    "sampling_engine": _choice("sampling_engine", ENGINES),
    "n": _range("n", 2, why=" (a pair needs two candidates)"),
    "temperature": _range("temperature", 0, low_open=True),
    "top_p": _range("top_p", 0, 1, low_open=True),
    "teacher": _choice("teacher", TEACHERS),
    "teacher_members": _range("teacher_members", 1, 64),
    "strategy": check_strategy,
    "confidence_quantile": _range("confidence_quantile", 0, 1),
    "logprob_quantile": _range("logprob_quantile", 0, 1),
    "confidence_measure": check_confidence_measure,
    "likelihood": _choice("likelihood", LIKELIHOOD_MEASURES),
    "min_margin": _range("min_margin", 0),
    "length_control": _choice("length_control", LENGTH_CONTROLS),
    "length_band": _range("length_band", 0),
    "rm_epochs": _range("rm_epochs", 0, low_open=True),
    "rm_learning_rate": _range("rm_learning_rate", 0, low_open=True),
    "rm_warmup_ratio": _range("rm_warmup_ratio", 0, 1, high_open=True),
    "rm_head": _choice("rm_head", reward_head.HEADS),
    "rm_val_fraction": _range("rm_val_fraction", 0, 1, high_open=True),
    "human_holdout": _range("human_holdout", 0, 1, high_open=True),
    "student_init": _choice("student_init", STUDENT_INITS),
    "synthetic_ratio": _range("synthetic_ratio", 0),
    "high_confidence_fraction": _range("high_confidence_fraction", 0, 1, low_open=True),
    "max_accuracy_drop": _range("max_accuracy_drop", 0),
    "teacher_min_length_balanced_accuracy": _range("teacher_min_length_balanced_accuracy", high=1),
    "teacher_gate": _choice("teacher_gate", TEACHER_GATES),
    "seed": _range("seed", 0),
    "pair_seed": _range("pair_seed", 0),
    "torch_threads": _range("torch_threads", 0),
    "gpus": _range("gpus", 0),
}


def check_value(name: str, value):
    """`value` as setting `name` takes it (e.g. an int for a float setting, a list as a tuple), after
    the checks of that setting alone (its type and range; no cross-setting rule)."""
    value = _coerce(name, value, _types()[name])
    if name in _CHECKS:
        try:
            _CHECKS[name](value)
        except SettingsError:
            raise
        except ValueError as exc:
            message = str(exc)
            raise SettingsError(message if message.startswith(name) else f"{name}: {message}") from exc
    return value


RULES = (
    "A pairwise teacher takes length_control 'none' (a length control needs a reward per candidate; knockout "
    "tournaments give none), strategy 'west_of_n' and teacher_members 1. Choosing teacher: pairwise in the "
    "Dagster resources or an override sets length_control 'none' unless it is set too.",
    "confidence_measure 'agreement' needs a teacher ensemble (teacher_members >= 2).",
    "student_init 'teacher' needs a teacher that is one model (checked against the teacher's folder when a "
    "student trains).",
    "In an experiment, length_control and length_balance are set per arm (grid.length), and the teacher is pointwise.",
)


def _check_rules(s: Settings) -> None:
    """The rules between settings (RULES), written once."""
    if s.teacher == "pairwise":
        # length control needs a reward per candidate; knockout tournaments give none
        try:
            check_length_control(s.length_control, s.length_band, pairwise=True)
            check_strategy(s.strategy, pairwise=True)
        except ValueError as exc:
            raise SettingsError(str(exc)) from exc
        if s.teacher_members > 1:
            raise SettingsError(f"teacher_members: {s.teacher_members} needs a pointwise teacher; a pairwise teacher "
                                "is one model (set teacher_members: 1 or teacher: pointwise)")
    if s.confidence_measure == "agreement" and s.teacher_members < 2:
        raise SettingsError("confidence_measure 'agreement' needs a teacher ensemble (teacher_members >= 2)")


def with_overrides(base: Settings, overrides: typing.Mapping) -> Settings:
    """`base` with `overrides`; a pairwise teacher among them sets length_control 'none' unless
    length_control is overridden too (the profiles' length band needs a reward per candidate)."""
    overrides = dict(overrides)
    if overrides.get("teacher") == "pairwise" and "length_control" not in overrides:
        overrides["length_control"] = "none"
    return base.replace(**overrides)


def markdown(profiles: typing.Mapping[str, Settings]) -> str:
    """docs/settings.md: every setting by stage, its type, its value in each profile and its help."""
    def show(value) -> str:
        if value is None:
            return "null"
        if isinstance(value, str) and str(DATA_DIR) in value:
            value = value.replace(str(DATA_DIR), DATA_DIR.name)
        if isinstance(value, tuple):
            value = list(value)
        return f"`{value}`".replace("|", "\\|")

    lines = ["# Settings", "",
             "<!-- generated by `wofn settings --markdown > docs/settings.md` from wofn/settings.py; "
             "tests/core/test_settings.py fails when it is stale -->", "",
             "Every setting of a run, by stage: its type, its value in each profile (`WOFN_PROFILE`), "
             "and what it does. They are declared once, in "
             "`wofn/settings.py`; the Dagster resources, the Beam jobs' arguments, experiments' "
             "`settings:` / `tune:` and this page all come from there. Set them in the Dagster UI's "
             "launchpad (resource `settings`, or `policy` / `reward_models` where noted), in an "
             "experiment's `settings:`, or through the environment variable named.", ""]
    for group, title in GROUPS.items():
        lines += [f"## {title}", "", "| setting | type | " + " | ".join(profiles) + " | what it does |",
                  "|---|---|" + "---|" * len(profiles) + "---|"]
        for f in fields(Settings):
            if f.metadata["group"] != group:
                continue
            where = []
            if f.metadata["resource"]:
                where.append("resource `{}.{}`".format(*f.metadata["resource"]))
            if f.metadata["env"]:
                where.append(f"`${f.metadata['env']}`")
            help_text = f.metadata["help"] + (f" ({', '.join(where)})" if where else "")
            lines.append(f"| `{f.name}` | {type_name(f.name)} | "
                         + " | ".join(show(getattr(p, f.name)) for p in profiles.values())
                         + f" | {help_text.replace('|', '/')} |")
        lines.append("")
    lines += ["## Rules between settings", "", *(f"- {rule}" for rule in RULES), ""]
    return "\n".join(lines)
