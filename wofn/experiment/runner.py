"""Running an experiment grid: sample once, score once, build every pair set, train one student per cell.

This module orchestrates (like the CLI and the Dagster job that call it): it runs the two Beam jobs
(`beam_jobs.sample_candidates`, `beam_jobs.score_candidates`) and the core steps of `wofn`.
Everything lands under `$WOFN_HOME/experiments/<name>/`; each step writes its result when it
completes and is skipped when it finds it, so a stopped run resumes where it stopped:

    prompts/                 the unlabeled prompts (wofn.schemas.PROMPTS)
    candidates/              N = max(grid.n) responses per prompt (the sampling job's shards: resumable)
    base/seed=<s>/           base RM per seed (model/ and result.json); seed `teacher_seed` is the teacher
    teacher/                 with `teacher_members: K` > 1: the ensemble of the base RMs of seeds teacher_seed ..
                             teacher_seed+K-1 (wofn.reward_ensemble), evaluated in teacher_result.json
    scores/                  the teacher's reward per candidate
    subsets/n=<k>/           candidates and scores with candidate_idx < k (never resampled)
    pairs/<strategy>[+<length selection>]/n=<k>/seed=<s>/   the strategy's pairs before filtering
    pair_stats.json          per (strategy, N, filter, seed): pairs, length balance, policy log-likelihood
    cells/<cell id>.json     one trained and evaluated student
    progress.json            cells done / total, seconds so far, ETA
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import statistics
import time
from itertools import product
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wofn import data, evaluation, models, pairs, prompt_sources, reward_ensemble, stages, stats, training
from wofn.experiment.config import Cell, ExperimentConfig, filter_quantiles, split_length
from wofn.paths import REPO_ROOT, content_hash, publish, staging_dir
from wofn.settings import Settings

log = logging.getLogger(__name__)

BENCH_FILE = REPO_ROOT / "bench" / "latest.jsonl"
EVAL_FILE = "result.json"


def write_json(path: Path, value) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


def read_json(path: Path):
    return json.loads(path.read_text())


class Experiment:
    """One config's folder and its steps (see the module docstring for the layout)."""

    def __init__(self, config: ExperimentConfig, home: Path):
        self.config = config
        self.root = Path(home).resolve() / "experiments" / config.name
        self.settings = config.settings
        if config.tune and self.path("tune", "chosen.json").exists():
            self.settings = config.settings.replace(**read_json(self.path("tune", "chosen.json"))["settings"])

    # ---- layout
    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def base_dir(self, seed: int) -> Path:
        return self.path("base", f"seed={seed}")

    def teacher_seeds(self) -> list[int]:
        """The base RMs that make the teacher: `teacher_seed`, and with `teacher_members: K` the next K-1 seeds."""
        return [self.config.teacher_seed + k for k in range(self.settings.teacher_members)]

    def teacher_dir(self) -> Path:
        """The teacher_seed's base RM, or with `teacher_members` > 1 the ensemble of teacher_seeds' (teacher/)."""
        if self.settings.teacher_members == 1:
            return self.base_dir(self.config.teacher_seed) / "model"
        return self.path("teacher")

    def subset(self, n: int, table: str) -> Path:
        if n == self.config.max_n:
            return self.path(table)
        return self.path("subsets", f"n={n}", table)

    def pairs_dir(self, strategy: str, n: int, seed: int, selection: str = "none") -> Path:
        """The pairs of a strategy at N (and with a length-control selection option) before filtering."""
        name = strategy if selection == "none" else f"{strategy}+{selection}"
        return self.path("pairs", name, f"n={n}", f"seed={pairs.seed_for(strategy, seed) or 0}")

    def cell_file(self, cell: Cell) -> Path:
        return self.path("cells", f"{cell.id}.json")

    # ---- inputs
    def human_pairs(self) -> list[dict]:
        """D_L: the human pairs, plus `extra_human_pairs` when set (e.g. the UltraFeedback sample)."""
        return data.training_pairs(self.settings)

    def eval_pairs(self) -> list[dict]:
        return data.load_preferences(self.settings.eval_pairs, self.settings.max_eval_pairs).to_pylist()

    def train_config(self, seed: int) -> training.TrainConfig:
        return stages.train_config(self.settings, seed)

    def threads(self) -> int:
        return self.settings.threads()

    # ---- steps
    def prompts(self) -> Path:
        out = self.path("prompts")
        if not out.exists():
            table, errors, counts = gather_prompts(self.settings)
            staging = staging_dir(out)
            pq.write_table(table, staging / "part-00000.parquet")
            publish(staging, out)
            if errors.num_rows:
                self.path("prompt_errors").mkdir(parents=True, exist_ok=True)
                pq.write_table(errors, self.path("prompt_errors", "part-00000.parquet"))
            write_json(self.path("prompt_counts.json"), counts)
            log.info("prompts: %d kept, %d left out (prompt_errors/); by source %s", table.num_rows, errors.num_rows,
                     counts)
        return out

    def sampling_args(self) -> list[str]:
        """The sampling job's arguments: N = the grid's largest."""
        return stages.sampling_argv(self.settings.replace(n=self.config.max_n), self.path("prompts"),
                                    self.path("candidates"), self.path("candidate_errors"))

    def sample(self) -> dict:
        """N = max(grid.n) candidates per prompt; the job skips shards an earlier run finished."""
        from beam_jobs import sample_candidates

        done = self.path("sampled.json")
        if done.exists():
            return read_json(done)
        self.prompts()
        started = time.monotonic()
        stats = sample_candidates.run(self.sampling_args(), save_main_session=False)
        stats = {**stats, "seconds": time.monotonic() - started}
        write_json(done, stats)
        log.info("sampling: %s", stats)
        return stats

    def base(self, seed: int) -> dict:
        """The base RM of one seed, trained on the human pairs and evaluated; reused when present."""
        result_file = self.base_dir(seed) / EVAL_FILE
        if result_file.exists():
            return read_json(result_file)
        models.set_torch_threads(self.threads())
        model_dir = self.base_dir(seed) / "model"
        human = self.human_pairs()
        log.info("base RM seed %d: training on %d human pairs", seed, len(human))
        metrics = training.train_reward_model(self.settings.rm_backbone, human, self.train_config(seed), model_dir,
                                              manifest={"role": "base", "experiment": self.config.name})
        result = {"seed": seed, "train_seconds": metrics["seconds"],
                  "revision": models.read_manifest(str(model_dir))["revision"], **self._evaluate(model_dir)}
        write_json(result_file, result)
        log.info("base RM seed %d: accuracy %.3f, length-balanced %.3f (%.0fs)", seed, result["accuracy"],
                 result["length_balanced_accuracy"], metrics["seconds"])
        return result

    def holdout_pairs(self) -> list[dict]:
        """The second held-out set: the `human_holdout` share of the human pairs (none when it is 0)."""
        return data.holdout_pairs(self.settings).to_pylist()

    def _evaluate(self, model_dir: Path) -> dict:
        """Metrics on the evaluation pairs; their count is `eval_n` (`n` is a cell's N). With the per-pair
        margins and the pairs' length signs, which the report's paired intervals are computed from. With
        `human_holdout`, the same metrics on the held-out human pairs under "holdout"."""
        result = self._metrics(model_dir, self.eval_pairs())
        held = self.holdout_pairs()
        if held:
            result["holdout"] = self._metrics(model_dir, held)
        return result

    def _metrics(self, model_dir: Path, pairs: list[dict]) -> dict:
        result = evaluation.evaluate(str(model_dir), pairs, device=self.settings.device,
                                     high_confidence_fraction=self.settings.high_confidence_fraction,
                                     with_margins=True)
        result["length_signs"] = stats.length_signs(pairs)
        return {("eval_n" if k == "n" else k): v for k, v in result.items() if k != "model"}

    def teacher(self) -> Path:
        """The teacher's folder: its base RMs trained (reused when present), and with `teacher_members` > 1
        an ensemble folder over them (wofn.reward_ensemble; each member keeps its own validation split)."""
        for seed in self.teacher_seeds():
            self.base(seed)
        out = self.teacher_dir()
        if len(self.teacher_seeds()) > 1 and not out.exists():
            staging = staging_dir(out)
            reward_ensemble.write_folder(staging, [self.base_dir(s) / "model" for s in self.teacher_seeds()],
                                         {"role": "teacher", "experiment": self.config.name,
                                          "member_seeds": self.teacher_seeds()})
            publish(staging, out)
            result = {"seeds": self.teacher_seeds(), "revision": models.read_manifest(str(out))["revision"],
                      **self._evaluate(out)}
            write_json(self.path("teacher_result.json"), result)
            log.info("teacher ensemble of seeds %s: accuracy %.3f, length-balanced %.3f", self.teacher_seeds(),
                     result["accuracy"], result["length_balanced_accuracy"])
        return out

    def score(self) -> Path:
        """The teacher's reward for every candidate (skipped when scores/ exists)."""
        from beam_jobs import score_candidates

        out = self.path("scores")
        if out.exists():
            return out
        staging, errors = staging_dir(out), staging_dir(self.path("score_errors"))
        started = time.monotonic()
        stats = score_candidates.run(stages.scoring_argv(self.settings, self.path("candidates"), staging, errors,
                                                         self.teacher_dir()), save_main_session=False)
        publish(errors, self.path("score_errors"))
        publish(staging, out)
        log.info("scoring: %s in %.0fs", stats, time.monotonic() - started)
        return out

    def subsets(self) -> None:
        """For each smaller N: the first N candidates of every prompt, and their scores."""
        for n in self.config.ns:
            for table in ("candidates", "scores"):
                out = self.subset(n, table)
                if out.exists():
                    continue
                full = pq.read_table(self.path(table))
                staging = staging_dir(out)
                pq.write_table(full.filter(pc.less(full["candidate_idx"], n)), staging / "part-00000.parquet")
                publish(staging, out)

    def pair_sets(self) -> list[dict]:
        """Every (strategy, N, filter, length, seed) pair set's statistics (pair_stats.json); pairs written once."""
        s = self.settings
        stats = []
        selections = sorted({split_length(length)[0] for length in self.config.lengths})
        for strategy in self.config.strategies:
            for n in self.config.ns:
                for seed in self.config.seeds:
                    for selection in selections:
                        folder = self.pairs_dir(strategy, n, seed, selection)
                        if folder.exists():
                            continue
                        options = {} if selection == "none" else {"length_control": selection,
                                                                  "length_band": s.length_band}
                        table, _ = pairs.select_pairs(self.subset(n, "candidates"), self.subset(n, "scores"),
                                                      strategy=strategy, seed=seed, **options)
                        staging = staging_dir(folder)
                        pq.write_table(table, staging / "part-00000.parquet")
                        publish(staging, folder)
                    for filter_name in self.config.filters:
                        for length in self.config.lengths:
                            kept = self.filtered(strategy, n, filter_name, seed, length)
                            stats.append({"strategy": strategy, "n": n, "filter": filter_name, "length": length,
                                          "seed": seed, **pair_summary(kept)})
        write_json(self.path("pair_stats.json"), stats)
        return stats

    def filtered(self, strategy: str, n: int, filter_name: str, seed: int, length: str = "none") -> pa.Table:
        """A pair set as a student gets it: selected (with the length selection), filtered, then balanced."""
        selection, balanced = split_length(length)
        confidence, likelihood = filter_quantiles(filter_name, self.settings)
        arm = self.settings.replace(confidence_quantile=confidence, logprob_quantile=likelihood,
                                    length_balance=balanced)
        return stages.filter_pairs(arm, self.pairs_dir(strategy, n, seed, selection), strategy,
                                   pairs.seed_for(strategy, seed)).table

    def cell(self, cell: Cell, human: list[dict]) -> dict:
        """Train and evaluate one student; its result file marks it done."""
        s = self.settings
        synthetic = self.filtered(cell.strategy, cell.n, cell.filter, cell.seed, cell.length)
        mixed, mix = training.mix_pairs(human, synthetic.to_pylist(), s.synthetic_ratio, cell.seed)
        out = self.path("students", cell.id)
        models.set_torch_threads(self.threads())
        metrics = training.train_reward_model(
            s.rm_backbone, mixed, self.train_config(cell.seed), out,
            manifest={"role": "experiment_student", "experiment": self.config.name, "cell": cell.id, "mix": mix})
        result = {
            **self._evaluate(out),  # first: its "n" (evaluation pairs) becomes eval_n, the cell's n is N
            "cell": cell.id, "strategy": cell.strategy, "n": cell.n, "filter": cell.filter, "length": cell.length,
            "seed": cell.seed,
            "mix": mix, "pairs": pair_summary(synthetic), "train_seconds": metrics["seconds"],
            "best_val_accuracy": metrics["best_val_accuracy"],
            "lineage": {"teacher_revision": models.read_manifest(str(self.teacher_dir()))["revision"],
                        "candidates": content_hash(self.path("candidates")),
                        "pairs": content_hash(self.pairs_dir(cell.strategy, cell.n, cell.seed,
                                                             split_length(cell.length)[0])),
                        "config": self.config.digest, "revision": models.read_manifest(str(out))["revision"]},
        }
        write_json(self.cell_file(cell), result)
        if not self.config.keep_students:
            shutil.rmtree(out, ignore_errors=True)
        return result

    def cells(self, on_cell: Callable[[dict], None] | None = None) -> list[dict]:
        """Train every cell without a result file, seed-major, each seed's base RM first (reused when
        present); `on_cell` gets the progress after each."""
        todo = [c for c in self.config.cells() if not self.cell_file(c).exists()]
        total = len(self.config.cells())
        done = total - len(todo)
        human = self.human_pairs()
        started, spent = time.monotonic(), []
        for cell in todo:
            base = self.base(cell.seed)
            t0 = time.monotonic()
            result = self.cell(cell, human)
            spent.append(time.monotonic() - t0)
            done += 1
            eta = statistics.mean(spent) * (total - done)
            progress = {"cells_done": done, "cells_total": total, "seconds_this_run": time.monotonic() - started,
                        "eta_s": eta, "last": cell.id, "last_accuracy": result["accuracy"],
                        "last_length_balanced_accuracy": result["length_balanced_accuracy"]}
            write_json(self.path("progress.json"), progress)
            if on_cell:
                on_cell(progress)
            log.info("cell %d/%d %s: accuracy %.3f (base %.3f, %+.3f), length-balanced %.3f, %d synthetic pairs, "
                     "%.0fs; ETA %.0f min", done, total, cell.id, result["accuracy"], base["accuracy"],
                     result["accuracy"] - base["accuracy"], result["length_balanced_accuracy"],
                     result["mix"]["synthetic_pairs"], spent[-1], eta / 60)
        return [read_json(self.cell_file(c)) for c in self.config.cells()]

    def results(self) -> dict:
        """What exists so far: base results per seed, cell results, pair statistics."""
        bases = [read_json(self.base_dir(s) / EVAL_FILE) for s in self.config.seeds
                 if (self.base_dir(s) / EVAL_FILE).exists()]
        cells = [read_json(self.cell_file(c)) for c in self.config.cells() if self.cell_file(c).exists()]
        pair_stats = read_json(self.path("pair_stats.json")) if self.path("pair_stats.json").exists() else []
        tuned = read_json(self.path("tune", "chosen.json")) if self.path("tune", "chosen.json").exists() else None
        teacher = self.path("teacher_result.json")
        return {"bases": bases, "cells": cells, "pair_stats": pair_stats, "tune": tuned,
                "teacher": read_json(teacher) if teacher.exists() else None,
                "cells_total": len(self.config.cells())}

    def tune(self) -> dict | None:
        """Sweep the `tune:` settings: one base RM per combination and seed of `tune_seeds` (default:
        teacher_seed), the best mean validation accuracy (ties: lower validation loss) becomes the
        settings of every later training."""
        if not self.config.tune:
            return None
        chosen_file = self.path("tune", "chosen.json")
        if chosen_file.exists():
            return read_json(chosen_file)
        keys = [key for key, _ in self.config.tune]
        seeds = self.config.tune_seeds or (self.config.teacher_seed,)
        trials = []
        for values in product(*(values for _, values in self.config.tune)):
            combo = dict(zip(keys, values))
            name = "_".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in combo.items())
            runs = [self._tune_run(combo, name if seeds == (self.config.teacher_seed,) else f"{name}_seed={seed}", seed)
                    for seed in seeds]
            trials.append({"settings": combo, "seeds": list(seeds),
                           "val_accuracy": statistics.fmean(r["val_accuracy"] for r in runs),
                           "val_loss": statistics.fmean(r["val_loss"] for r in runs),
                           "val_accuracy_by_seed": [r["val_accuracy"] for r in runs],
                           "train_seconds": sum(r["train_seconds"] for r in runs)})
        chosen = max(trials, key=lambda t: (t["val_accuracy"], -t["val_loss"]))
        result = {"settings": chosen["settings"], "trials": trials}
        write_json(chosen_file, result)
        self.settings = self.config.settings.replace(**chosen["settings"])
        log.info("tune: chose %s (validation accuracy %.3f)", chosen["settings"], chosen["val_accuracy"])
        return result

    def _tune_run(self, combo: dict, name: str, seed: int) -> dict:
        """One tune base RM (settings `combo`, seed `seed`), trained unless its result file exists."""
        result_file = self.path("tune", f"{name}.json")
        if not result_file.exists():
            models.set_torch_threads(self.threads())
            settings, self.settings = self.settings, self.config.settings.replace(**combo)
            try:
                out = self.path("tune", name)
                log.info("tune %s: training a base RM", name)
                metrics = training.train_reward_model(self.settings.rm_backbone, self.human_pairs(),
                                                      self.train_config(seed), out)
            finally:
                self.settings = settings
            shutil.rmtree(out, ignore_errors=True)
            best = max(metrics["validations"], key=lambda v: (v["val_accuracy"], -v["val_loss"]))
            write_json(result_file, {"settings": combo, "seed": seed, "val_accuracy": best["val_accuracy"],
                                     "val_loss": best["val_loss"], "best_step": best["step"],
                                     "train_seconds": metrics["seconds"]})
            log.info("tune %s: validation accuracy %.3f", name, best["val_accuracy"])
        return read_json(result_file)

    def inputs(self) -> None:
        """Everything before the students: tuning (if asked), candidates, the teacher's base RMs, the
        teacher's scores, the pair sets. The other seeds' base RMs are trained by `cells`, each just
        before its seed's students, so a stopped run leaves whole seeds (base and students) behind."""
        self.tune()
        self.sample()
        self.teacher()
        self.score()
        self.subsets()
        self.pair_sets()

    def run(self) -> dict:
        """Every step in order; each is skipped when its result exists."""
        self.inputs()
        self.cells()
        return self.results()


def gather_prompts(settings: Settings):
    """D_U from the `prompt_sources` setting, deduplicated by prompt_id, held-out prompts left out."""
    return prompt_sources.gather_for(settings)


def pair_summary(table: pa.Table) -> dict:
    """pairs.pair_stats plus the pairs' mean per-token log-likelihood under the policy."""
    n = table.num_rows
    mean = (lambda col: sum(table.column(col).to_pylist()) / n) if n else (lambda col: None)
    return {**pairs.pair_stats(table), "prompts": n,
            "chosen_logprob_mean": mean("chosen_logprob_mean"), "rejected_logprob_mean": mean("rejected_logprob_mean")}


# ---- cost

def bench_rates(path: Path = BENCH_FILE) -> dict:
    """Throughputs measured by `make bench` (bench/latest.jsonl), by stage."""
    records = {}
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                records[record["stage"]] = record
    return records


def estimate(config: ExperimentConfig, home: Path | None = None, bench: dict | None = None) -> dict:
    """Seconds per step from the benchmark's throughputs, for the work not done yet (under `home`, if given).

    Sampling: prompts x max N x (generated tokens per candidate) / tokens/s; scoring: candidates /
    sequences/s; training: (human + synthetic pairs) x (1 - validation share) x epochs / pairs/s,
    plus evaluation (2 sequences per eval pair at the scoring rate). The synthetic count per cell
    assumes each filter keeps (1 - quantile) of the pairs (an upper bound for balanced pair sets).
    """
    bench = bench_rates() if bench is None else bench
    s = config.settings
    missing = [stage for stage in ("sampling", "scoring", "training") if stage not in bench]
    if missing:
        raise ValueError(f"{BENCH_FILE}: no benchmark figures for {missing}; run `make bench` first")
    dtype = models.resolve_dtype(s.policy_dtype, s.device)
    sampling = bench["sampling"]["ours"][dtype if dtype in bench["sampling"]["ours"] else "float32"]
    tokens_per_candidate = sampling["generated_tokens"] / sampling["candidates"]
    # the benchmark's responses end at its max_new_tokens or before; another cap scales that length
    # as an upper bound (at 256 new tokens the benchmark's responses averaged 64% of it, at 64 86%)
    bench_cap = (bench["sampling"].get("config") or {}).get("max_new_tokens")
    if bench_cap and bench_cap != s.max_new_tokens:
        tokens_per_candidate *= s.max_new_tokens / bench_cap
    score_dtype = models.resolve_dtype(s.score_dtype, s.device)
    seqs_per_s = bench["scoring"]["ours"][score_dtype if score_dtype in bench["scoring"]["ours"] else "float32"][
        "sequences_per_s"]
    training = bench["training"]["ours"]["bf16" if stages.rm_bf16(s) else "fp32"]
    pairs_per_s = training["pairs_per_s"]
    # the benchmark trains and scores its own backbone (MiniLM): a run on another one computes
    # (bench's matmul parameters / the run's) as fast, at the same share of the machine's peak
    bench_params = (training.get("mfu") or {}).get("flop_params")
    run_params = models.reward_model_matmul_params(s.rm_backbone) if bench_params else None
    scale = bench_params / run_params if bench_params and run_params else 1.0
    pairs_per_s, seqs_per_s = pairs_per_s * scale, seqs_per_s * scale

    prompts = gather_prompts(s)[0].num_rows
    human = len(data.training_pairs(s))
    n_eval = data.load_preferences(s.eval_pairs, s.max_eval_pairs).num_rows + data.holdout_pairs(s).num_rows
    candidates = prompts * config.max_n
    exp = Experiment(config, home) if home is not None else None

    def done(path_fn, *args) -> bool:
        return exp is not None and path_fn(*args).exists()

    def train_seconds(pairs_total: float) -> float:
        return pairs_total * (1 - s.rm_val_fraction) * s.rm_epochs / pairs_per_s + 2 * n_eval / seqs_per_s

    steps = {"sampling": 0.0 if done(lambda: exp.path("sampled.json")) else
             candidates * tokens_per_candidate / sampling["generated_tokens_per_s"]}
    members = s.teacher_members  # an ensemble teacher scores every candidate once per member
    steps["scoring"] = 0.0 if done(lambda: exp.path("scores")) else members * candidates / seqs_per_s
    combos = math.prod(len(values) for _, values in config.tune) * max(1, len(config.tune_seeds)) if config.tune else 0
    steps["tuning"] = 0.0 if done(lambda: exp.path("tune", "chosen.json")) else combos * train_seconds(human)
    base_seeds = sorted(set(config.seeds) | {config.teacher_seed + k for k in range(members)})
    steps["base_models"] = sum(train_seconds(human) for seed in base_seeds
                               if not done(lambda: exp.base_dir(seed) / EVAL_FILE))
    cells = [c for c in config.cells() if not done(exp.cell_file, c)] if exp else config.cells()
    student = 0.0
    for cell in cells:
        confidence, likelihood = filter_quantiles(cell.filter, s)
        synthetic = min(prompts * (1 - confidence) * (1 - likelihood), s.synthetic_ratio * human)
        student += train_seconds(human + synthetic)
    steps["students"] = student
    # the rate holds for the benchmark's rows decoded at once (its slots; a benchmark from before
    # continuous batching: prompts x N per static batch); fewer rows decode less in parallel (N=4 x 8
    # prompts in static batches ran at ~45% of the N=8 x 8 rate), more rows more
    bench_config = bench["sampling"].get("config") or {}
    bench_rows = bench_config.get("ours_slots") or (bench_config.get("n") or 0) * (
        bench_config.get("ours_batch_prompts") or 0)
    # (the torch engine decodes sample_slots rows at once; vllm, and policies it cannot decode in slots,
    # static batches of sample_batch_size prompts)
    run_rows = s.sample_slots if s.sampling_engine == "torch" else config.max_n * s.sample_batch_size
    # the steps still to run in bf16 on a CPU that emulates it: the benchmark's rates do not hold there
    bf16_steps = {"sampling": dtype == "bfloat16", "scoring": score_dtype == "bfloat16",
                  **dict.fromkeys(("tuning", "base_models", "students"), stages.rm_bf16(s))}
    emulated = models.bf16_emulated(s.device)
    return {"prompts": prompts, "candidates": candidates, "human_pairs": human, "eval_pairs": n_eval,
            "sampling_rows_per_batch": {"run": run_rows, "benchmark": bench_rows or None},
            "students": len(cells), "students_total": len(config.cells()), "seconds": steps,
            "emulated_bf16_steps": [k for k, v in steps.items() if v and bf16_steps[k]] if emulated else [],
            "total_seconds": sum(steps.values()),
            "rates": {"sampling_tokens_per_s": sampling["generated_tokens_per_s"],
                      "tokens_per_candidate": tokens_per_candidate,
                      "max_new_tokens": {"run": s.max_new_tokens, "benchmark": bench_cap},
                      "scoring_sequences_per_s": seqs_per_s,
                      "training_pairs_per_s": pairs_per_s},
            "reward_model_matmul_params": {"run": run_params, "benchmark": bench_params,
                                           "backbone": s.rm_backbone, "rate_scale": scale}}


def format_estimate(est: dict) -> str:
    minutes = {k: v / 60 for k, v in est["seconds"].items()}
    lines = [f"estimated cost on this machine (from {BENCH_FILE.relative_to(REPO_ROOT)}): "
             f"{est['total_seconds'] / 60:.0f} min",
             f"  sampling   {minutes['sampling']:6.1f} min  ({est['candidates']} candidates at "
             f"{est['rates']['sampling_tokens_per_s']:.0f} tokens/s, "
             f"{est['rates']['tokens_per_candidate']:.0f} tokens each{_scaled_cap(est['rates'])})",
             f"  scoring    {minutes['scoring']:6.1f} min  ({est['rates']['scoring_sequences_per_s']:.0f} sequences/s)",
             f"  base RMs   {minutes['base_models']:6.1f} min  ({est['human_pairs']} human pairs, "
             f"{est['rates']['training_pairs_per_s']:.1f} training pairs/s)",
             f"  students   {minutes['students']:6.1f} min  ({est['students']} of {est['students_total']} "
             "still to train)"]
    rows = est.get("sampling_rows_per_batch") or {}
    if rows.get("benchmark") and rows["run"] != rows["benchmark"]:
        lines.insert(2, f"             (the rate is the benchmark's at {rows['benchmark']} rows decoded at once "
                        f"(slots); this run has {rows['run']}: expect it "
                        f"{'slower' if rows['run'] < rows['benchmark'] else 'faster'})")
    params = est.get("reward_model_matmul_params") or {}
    if params.get("rate_scale", 1.0) != 1.0:
        lines.append(f"             (scoring and training rates: the benchmark's backbone has "
                     f"{params['benchmark'] / 1e6:.1f}M matmul parameters, {params['backbone']} "
                     f"{params['run'] / 1e6:.1f}M: its rates x {params['rate_scale']:.3g})")
    elif params.get("benchmark") and params.get("run") is None:
        lines.append(f"             (scoring and training rates: the benchmark's backbone's; {params['backbone']}'s "
                     "config could not be read here to scale them)")
    if est.get("emulated_bf16_steps"):
        lines.append(f"  WARNING: this CPU has no native bf16 ({' / '.join(models.BF16_FLAGS)}): "
                     f"{', '.join(est['emulated_bf16_steps'])} would run in emulated bfloat16, tens of times "
                     "slower than above; set policy_dtype / score_dtype to float32 or auto, rm_bf16 to false or null")
    if minutes.get("tuning"):
        lines.insert(3, f"  tuning     {minutes['tuning']:6.1f} min  "
                        "(one base RM per combination of the tune: settings)")
    return "\n".join(lines)


def _scaled_cap(rates: dict) -> str:
    caps = rates.get("max_new_tokens") or {}
    if caps.get("benchmark") and caps["benchmark"] != caps["run"]:
        return (f" at most: the benchmark's length at max_new_tokens {caps['benchmark']}, "
                f"x {caps['run']}/{caps['benchmark']}")
    return ""


def _git_revision() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _shown(path) -> str:
    """A data path as the report shows it: relative to the repository when it lies inside (the shipped
    data), so a report does not carry one machine's folders; as given elsewhere."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def report_header(exp: Experiment) -> dict:
    """Where, when and at what cost the results were made (the estimate is the one made before the first run)."""
    import os
    import platform

    import torch

    results = exp.results()
    header = {"wofn revision (when the report was written)": _git_revision(),
              "machine": f"{os.cpu_count()} CPUs ({platform.machine()}), torch {torch.__version__}, no GPU"
              if not torch.cuda.is_available() else f"{torch.cuda.get_device_name()}, torch {torch.__version__}",
              "data": f"{_shown(exp.settings.human_pairs)} (human), {_shown(exp.settings.eval_pairs)} (evaluation), "
                      f"{_shown(exp.settings.unlabeled_prompts)} (prompts)",
              "policy / RM backbone": f"{exp.settings.policy} "
                                      f"({models.resolve_dtype(exp.settings.policy_dtype, exp.settings.device)}) / "
                                      f"{exp.settings.rm_backbone}"}
    if exp.path("estimate.json").exists():
        est = read_json(exp.path("estimate.json"))
        header["estimated cost before the run"] = (f"{est['total_seconds'] / 60:.0f} min ("
                                                   + ", ".join(f"{k} {v / 60:.0f}" for k, v in est["seconds"].items())
                                                   + f"; {est['students']} students)")
    if exp.path("estimates.jsonl").exists():
        for line in exp.path("estimates.jsonl").read_text().splitlines()[1:]:
            later = json.loads(line)
            if later["estimate"]["students"]:
                header[f"estimate when resumed at {later['time']}"] = (
                    f"{later['estimate']['total_seconds'] / 60:.0f} min for the {later['estimate']['students']} "
                    f"students still to train (config {later['config']})")
    spent = {"sampling": read_json(exp.path("sampled.json")).get("seconds", 0)
             if exp.path("sampled.json").exists() else 0,
             "base_models": sum(b["train_seconds"] for b in results["bases"]),
             "students": sum(c["train_seconds"] for c in results["cells"])}
    header["measured (training and sampling time)"] = (f"{sum(spent.values()) / 60:.0f} min ("
                                                       + ", ".join(f"{k} {v / 60:.0f}" for k, v in spent.items()) + ")")
    return header


def write_reports(exp: Experiment, report: str | Path | None, command: str) -> Path:
    """The report in the run's folder (results.md) and, when given, at `report` too; returns the last written."""
    from wofn.experiment import report as reporting

    results, header = exp.results(), report_header(exp)
    out = reporting.write_report(results, exp.config, exp.path("results.md"), command, header)
    if report:
        out = reporting.write_report(results, exp.config, Path(report), command, header)
    return out


def note_estimate(exp: Experiment, home: Path) -> dict:
    """The cost of what is left, before it runs: estimate.json (the first run's) and one line per run
    in estimates.jsonl."""
    import datetime

    est = estimate(exp.config, home)
    if not exp.path("estimate.json").exists():
        write_json(exp.path("estimate.json"), estimate(exp.config))
    with exp.path("estimates.jsonl").open("a") as fh:
        fh.write(json.dumps({"time": datetime.datetime.now().isoformat(timespec="minutes"), "config": exp.config.digest,
                             "estimate": est}) + "\n")
    return est


def run_and_report(config: ExperimentConfig, home: Path, report: str | Path | None, command: str,
                   run: bool = True) -> Path:
    """Run every missing step (unless `run` is False), then write the report (see write_reports)."""
    exp = Experiment(config, home)
    exp.root.mkdir(parents=True, exist_ok=True)
    if run:
        note_estimate(exp, home)
        exp.run()
    return write_reports(exp, report, command)
