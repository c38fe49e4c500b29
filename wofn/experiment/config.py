"""The experiment grid: which pair sets are built, which students are trained, with what settings.

A config file (YAML) names a grid and, optionally, the slices of it to train students for:

    name: hh                       # results go to $WOFN_HOME/experiments/<name>/
    profile: default               # settings start from this wofn profile ...
    settings: {max_prompts: null}  # ... with these keys overridden (profile keys only)
    grid:
      strategies: [west_of_n, random_pair, best_vs_random]
      n: [2, 4, 8, 16]             # sampled once at the largest N; N=k uses candidates 0..k-1
      filters: [none, confidence, likelihood, both]
      seeds: [0, 1, 2]
      length: [none, residual, band+balanced]   # optional (default [none]): length control, see LENGTHS
    train:                         # optional; left out = a student for every cell of the grid
      - {strategy: [west_of_n, random_pair, best_vs_random], n: 16, filter: both}
      - {strategy: west_of_n, n: [2, 4, 8], filter: both}

Pair statistics (counts, length balance, policy log-likelihood) are computed for every cell of the
grid (seconds); a student (minutes each on a CPU) is trained for every seed of each trained cell.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import yaml

from wofn import pairs, profiles
from wofn.settings import Settings, SettingsError, check_names

FILTERS = ("none", "confidence", "likelihood", "both")
# Length control of a pair set: a selection option of the pair step (settings.LENGTH_CONTROLS: rank by
# the reward's residual after regressing it on length, over the run or per prompt; pick within a
# length band of the best; or among the finished answers only), optionally followed by
# length-balanced sampling of the kept pairs.
LENGTHS = ("none", "residual", "residual_per_prompt", "band", "finished", "balanced",
           "residual+balanced", "residual_per_prompt+balanced", "band+balanced", "finished+balanced")
GRID_KEYS = {"strategies": "strategy", "n": "n", "filters": "filter", "seeds": "seed"}
OPTIONAL_GRID_KEYS = {"length": "length"}
SLICE_KEYS = ("strategy", "n", "filter", "length")
TOP_KEYS = ("name", "profile", "settings", "grid", "train", "teacher_seed", "keep_students", "tune", "tune_seeds")
# Reward-model training settings `tune:` may sweep: each combination trains a base RM on the training
# split of the human pairs, the best accuracy on the held-out validation split (rm_val_fraction) wins,
# and base RMs and students then train with it. The evaluation pairs are never looked at. With
# `tune_seeds: [0, 1, 2]` each combination trains once per seed (each seed holds out its own validation
# split) and the mean validation accuracy decides: one 10% split of ~1k pairs is too small to decide alone.
TUNABLE = ("rm_learning_rate", "rm_epochs", "rm_batch_size", "rm_max_length", "rm_warmup_ratio", "rm_head")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ConfigError(ValueError):
    """An experiment config wofn cannot run; the message names the file and the key."""


@dataclass(frozen=True, order=True)
class Cell:
    """One student: a pair set (strategy, N, filter) and the seed of its pairs, mix and training."""

    seed: int
    strategy: str
    n: int
    filter: str
    length: str = "none"

    @property
    def id(self) -> str:
        suffix = "" if self.length == "none" else f"-len-{self.length}"
        return f"{self.strategy}-n{self.n}-{self.filter}{suffix}-seed{self.seed}"

    @property
    def arm(self) -> tuple[str, int, str, str]:
        """The cell without its seed: what the results table averages over seeds."""
        return self.strategy, self.n, self.filter, self.length


def filter_quantiles(filter_name: str, settings: Settings) -> tuple[float, float]:
    """(confidence_quantile, logprob_quantile) of a filter: the settings' quantiles, or 0 (off)."""
    if filter_name not in FILTERS:
        raise ValueError(f"filter must be one of {', '.join(FILTERS)}; got {filter_name!r}")
    confidence = settings.confidence_quantile if filter_name in ("confidence", "both") else 0.0
    likelihood = settings.logprob_quantile if filter_name in ("likelihood", "both") else 0.0
    return confidence, likelihood


def split_length(length: str) -> tuple[str, bool]:
    """(selection option for pairs.select_pairs, balance the kept pairs?) of a LENGTHS value."""
    if length not in LENGTHS:
        raise ValueError(f"length must be one of {', '.join(LENGTHS)}; got {length!r}")
    selection, _, balanced = length.partition("+")
    if selection == "balanced":
        return "none", True
    return selection, balanced == "balanced"


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = field(metadata={"help": "results folder under $WOFN_HOME/experiments/"})
    profile: str = field(metadata={"help": "wofn profile the settings start from"})
    settings: Settings = field(metadata={"help": "the profile's settings with the config's overrides (length control: "
                                                   "'none', each arm sets its own)"})
    strategies: tuple[str, ...] = field(metadata={"help": "pair strategies (sql/strategies/)"})
    ns: tuple[int, ...] = field(metadata={"help": "candidates per prompt; sampled once at max(ns)"})
    filters: tuple[str, ...] = field(metadata={"help": "none, confidence, likelihood, both"})
    seeds: tuple[int, ...] = field(metadata={"help": "seeds of pairs, mix and training; one base RM per seed"})
    train: tuple[tuple[str, int, str, str], ...] = field(metadata={"help": "(strategy, n, filter, length) "
                                                                           "arms to train"})
    lengths: tuple[str, ...] = field(default=("none",), metadata={"help": "length controls (LENGTHS)"})
    teacher_seed: int = field(default=0, metadata={"help": "the base RM (by seed) that scores the candidates"})
    keep_students: bool = field(default=False, metadata={"help": "keep student model folders after evaluation"})
    tune: tuple[tuple[str, tuple], ...] = field(default=(), metadata={"help": "(setting, values) swept on validation"})
    tune_seeds: tuple[int, ...] = field(default=(), metadata={"help": "seeds each tune combination trains with "
                                                                      "(empty: teacher_seed)"})
    source: str = field(default="", metadata={"help": "the config file"})
    text: str = field(default="", metadata={"help": "the config file's text, as run"})

    @property
    def max_n(self) -> int:
        return max(self.ns)

    @property
    def digest(self) -> str:
        """A hash of what the config says (its parsed YAML): comments and layout do not change it, so a
        run or a saved state (`--restore-state`) stays the same version after a comment edit."""
        content = json.dumps(yaml.safe_load(self.text), sort_keys=True, default=str)
        return hashlib.sha256(content.encode("utf-8")).hexdigest()[:12]

    def arms(self) -> list[tuple[str, int, str, str]]:
        """Every (strategy, n, filter, length) of the grid, in grid order."""
        return list(product(self.strategies, self.ns, self.filters, self.lengths))

    def cells(self) -> list[Cell]:
        """The students to train, seed-major: all arms at the first seed before any at the second,
        so a run stopped early still has every arm at some seeds."""
        return [Cell(seed, *arm) for seed in self.seeds for arm in self.train]


def _as_list(value, where: str) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ConfigError(f"{where}: empty list")
    return values


def _check_values(values: list, allowed, where: str) -> None:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ConfigError(f"{where}: {bad} not in {list(allowed)}")


def parse(text: str, source: str = "<config>") -> ExperimentConfig:
    """Validate a config's YAML text; errors name the file and the key."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with keys {', '.join(TOP_KEYS)}")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; expected some of {list(TOP_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{source}: name must be a folder name (letters, digits, _ . -), got {name!r}")
    profile = raw.get("profile", "default")
    if profile not in profiles.PROFILES:
        raise ConfigError(f"{source}: profile must be one of {sorted(profiles.PROFILES)}, got {profile!r}")
    overrides = raw.get("settings") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: settings must be a mapping of setting names (docs/settings.md)")
    per_arm = sorted({"length_control", "length_balance"} & set(overrides))
    if per_arm:
        raise ConfigError(f"{source}: settings: {per_arm} are set per arm in an experiment: list them under "
                          "grid.length (e.g. [none, residual_per_prompt, band+balanced]); settings.length_band "
                          "sets the band's width")
    try:
        check_names(overrides, "settings: ")
        # the arms set length control themselves: the settings are checked with the paper's (none)
        settings = profiles.get(profile).replace(**overrides, length_control="none", length_balance=False)
    except SettingsError as exc:
        raise ConfigError(f"{source}: {exc}" if str(exc).startswith("settings: ")
                          else f"{source}: settings.{exc}") from exc
    if settings.teacher != "pointwise":
        raise ConfigError(f"{source}: settings.teacher must be 'pointwise' for an experiment "
                          "(random_pair and best_vs_random need a reward per candidate)")

    grid = raw.get("grid")
    if not isinstance(grid, dict):
        raise ConfigError(f"{source}: grid must be a mapping with keys {list(GRID_KEYS)}")
    missing = sorted(set(GRID_KEYS) - set(grid))
    unknown = sorted(set(grid) - set(GRID_KEYS) - set(OPTIONAL_GRID_KEYS))
    if missing or unknown:
        raise ConfigError(f"{source}: grid needs the keys {list(GRID_KEYS)} (optional: {list(OPTIONAL_GRID_KEYS)})"
                          + (f"; missing {missing}" if missing else "") + (f"; unknown {unknown}" if unknown else ""))
    strategies = _as_list(grid["strategies"], f"{source}: grid.strategies")
    _check_values(strategies, pairs.STRATEGIES, f"{source}: grid.strategies")
    ns = _as_list(grid["n"], f"{source}: grid.n")
    if any(not isinstance(n, int) or isinstance(n, bool) or n < 2 for n in ns):
        raise ConfigError(f"{source}: grid.n: every N must be an integer >= 2, got {ns}")
    filters = _as_list(grid["filters"], f"{source}: grid.filters")
    _check_values(filters, FILTERS, f"{source}: grid.filters")
    seeds = _as_list(grid["seeds"], f"{source}: grid.seeds")
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
        raise ConfigError(f"{source}: grid.seeds: every seed must be an integer >= 0, got {seeds}")
    lengths = _as_list(grid.get("length", ["none"]), f"{source}: grid.length")
    _check_values(lengths, LENGTHS, f"{source}: grid.length")
    for key, values in (("strategies", strategies), ("n", ns), ("filters", filters), ("seeds", seeds),
                        ("length", lengths)):
        if len(set(values)) != len(values):
            raise ConfigError(f"{source}: grid.{key}: repeated values in {values}")

    train_raw = raw.get("train")
    if train_raw is None:
        train = list(product(strategies, ns, filters, lengths))
    else:
        train = []
        for i, item in enumerate(_as_list(train_raw, f"{source}: train")):
            where = f"{source}: train[{i}]"
            if not isinstance(item, dict) or set(item) - set(SLICE_KEYS):
                raise ConfigError(f"{where}: expected a mapping with keys among {list(SLICE_KEYS)}")
            picked = []
            for key, allowed in (("strategy", strategies), ("n", ns), ("filter", filters), ("length", lengths)):
                values = _as_list(item.get(key, list(allowed)), f"{where}.{key}")
                _check_values(values, allowed, f"{where}.{key} (must be in the grid)")
                picked.append(values)
            train += [arm for arm in product(*picked) if arm not in train]
        order = {arm: i for i, arm in enumerate(product(strategies, ns, filters, lengths))}
        train.sort(key=order.__getitem__)

    teacher_seed = raw.get("teacher_seed", seeds[0])
    if teacher_seed not in seeds:
        raise ConfigError(f"{source}: teacher_seed {teacher_seed!r} must be one of grid.seeds {seeds}")
    keep = raw.get("keep_students", False)
    if not isinstance(keep, bool):
        raise ConfigError(f"{source}: keep_students must be true or false, got {keep!r}")
    tune = _parse_tune(raw.get("tune"), settings, source)
    tune_seeds = tuple(_as_list(raw["tune_seeds"], f"{source}: tune_seeds")) if "tune_seeds" in raw else ()
    if tune_seeds and not tune:
        raise ConfigError(f"{source}: tune_seeds needs a tune: mapping (the settings to sweep)")
    if (any(isinstance(s, bool) or not isinstance(s, int) for s in tune_seeds)
            or len(set(tune_seeds)) != len(tune_seeds)):
        raise ConfigError(f"{source}: tune_seeds must be distinct integers, got {list(tune_seeds)}")
    return ExperimentConfig(name=name, profile=profile, settings=settings, tune=tune, tune_seeds=tune_seeds,
                            strategies=tuple(strategies),
                            ns=tuple(sorted(ns)), filters=tuple(filters), seeds=tuple(seeds), train=tuple(train),
                            lengths=tuple(lengths),
                            teacher_seed=teacher_seed, keep_students=keep, source=source, text=text)


def _parse_tune(raw, settings: Settings, source: str) -> tuple[tuple[str, tuple], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source}: tune must be a mapping of settings to lists of values, e.g. "
                          "{rm_learning_rate: [1e-5, 3e-5, 1e-4]}")
    unknown = sorted(set(raw) - set(TUNABLE))
    if unknown:
        raise ConfigError(f"{source}: tune: {unknown} cannot be tuned; tunable: {list(TUNABLE)}")
    if not settings.rm_val_fraction > 0:
        raise ConfigError(f"{source}: tune needs a validation split: set settings.rm_val_fraction > 0")
    out = []
    for key, values in raw.items():
        values = _as_list(values, f"{source}: tune.{key}")
        try:
            checked = tuple(getattr(settings.replace(**{key: v}), key) for v in values)
        except SettingsError as exc:
            raise ConfigError(f"{source}: tune.{key}: {exc}") from exc
        out.append((key, checked))
    return tuple(out)


def load(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    return parse(path.read_text(encoding="utf-8"), str(path))
