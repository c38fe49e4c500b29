"""A sweep of base reward-model recipes: which teacher learns preference, chosen on validation only.

    python -m wofn.experiment.teacher_sweep run --out DIR [--backbone SPEC] [--device cuda] [--workers 8]
    python -m wofn.experiment.teacher_sweep report --out DIR [--cpu-rate 128=9.0 ...] [--plot FILE.png] > table.md

Each trial trains one base RM with `wofn.training.train_reward_model` (the function the pipeline's
`base_reward_model` and `wofn experiment`'s `tune:` call) on `data/hh_train.parquet` with a seeded
10% validation split, then evaluates it with `wofn.evaluation` on

- `val`: that validation split (HH pairs only), the ONLY numbers a recipe is chosen by;
- `hh_test`: `data/hh_test.parquet` (304 pairs), reported, never used to choose;
- `uf_heldout`: the hash-held-out half of `data/uf_train.parquet` (`data.hash_part`), a second
  held-out set that no trial trains on (the `uf` arm trains on the other half).

One JSON line per finished trial goes to DIR/trials.jsonl (with the per-pair margins, so
ensembles and paired differences can be computed afterwards); a rerun skips the trials already
there. Trials run in worker processes (one torch thread each), several on one GPU at once.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import lru_cache
from itertools import product
from pathlib import Path

import numpy as np

from wofn.paths import DATA_DIR

SEEDS = (0, 1, 2, 3, 4)
VAL_FRACTION = 0.1


def grid() -> list[dict]:
    """The trials, most important first (a run cut short by its time budget keeps the main grid)."""
    base = {"objective": "pointwise", "extra": None, "warmup": 0.1, "batch_size": 16}
    main = [{**base, "head": h, "lr": lr, "epochs": e, "max_length": L}
            for h, lr, e, L in product(("hf", "mean"), (3e-5, 1e-4, 2e-4, 5e-4), (2.0, 4.0), (128, 256))]
    side = [{**base, "head": "mean", "lr": lr, "epochs": 4.0, "max_length": 256, "warmup": w}
            for lr, w in product((1e-4, 2e-4), (0.0, 0.3))]
    side += [{**base, "head": "mean", "lr": lr, "epochs": 4.0, "max_length": 256, "extra": "uf"} for lr in (1e-4, 2e-4)]
    side += [{**base, "head": "mean", "lr": lr, "epochs": 4.0, "max_length": 384, "objective": "pairwise"}
             for lr in (1e-4, 2e-4)]
    trials = []
    for seeds in (SEEDS[:3], SEEDS[3:]):  # three seeds of everything first, then the rest
        for recipe in main + side:
            trials += [{**recipe, "seed": s} for s in seeds]
    return trials


def recipe_name(t: dict) -> str:
    name = (f"{t['objective']} head={t['head']} lr={t['lr']:g} epochs={t['epochs']:g} len={t['max_length']} "
            f"warmup={t['warmup']:g}")
    return name + (" +uf" if t["extra"] else "")


def trial_id(t: dict) -> str:
    return f"{recipe_name(t)} seed={t['seed']}"


@lru_cache(maxsize=None)
def _pairs(name: str) -> list[dict]:
    """hh_train, hh_test, uf_heldout or uf_rest, read once per process (callers do not modify them)."""
    from wofn import data

    if name == "hh_train":
        return data.load_preferences(DATA_DIR / "hh_train.parquet").to_pylist()
    if name == "hh_test":
        return data.load_preferences(DATA_DIR / "hh_test.parquet").to_pylist()
    uf = data.load_preferences(DATA_DIR / "uf_train.parquet").to_pylist()
    return data.hash_part(uf, "holdout" if name == "uf_heldout" else "rest")


def hh_validation(train_pairs: list[dict], seed: int) -> list[dict]:
    """The HH pairs of the validation split that training holds out of `train_pairs` for `seed`."""
    from wofn import training

    _, val = training.split_validation(train_pairs, VAL_FRACTION, seed)
    return [p for p in val if str(p["source"]).startswith("hh")]


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def run_trial(trial: dict, backbone: str, device: str) -> dict:
    """Train one base RM and evaluate it; returns the trial's JSON record."""
    from wofn import evaluation, models, pairwise, training

    human = _pairs("hh_train")
    train_pairs = human + (_pairs("uf_rest") if trial["extra"] == "uf" else [])
    config = training.TrainConfig(
        epochs=trial["epochs"], batch_size=trial["batch_size"], learning_rate=trial["lr"],
        warmup_ratio=trial["warmup"], max_length=trial["max_length"], seed=trial["seed"], bf16=True,
        device=device, val_fraction=VAL_FRACTION, log_every=10_000, head=trial["head"])
    objective = pairwise.PAIRWISE if trial["objective"] == "pairwise" else training.POINTWISE
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        metrics = training.train_reward_model(backbone, train_pairs, config, Path(tmp) / "rm", objective=objective)
        rm = models.load_reward_model(str(Path(tmp) / "rm"), device=device)
        sets = {"val": hh_validation(train_pairs, trial["seed"]),
                "hh_test": _pairs("hh_test"), "uf_heldout": _pairs("uf_heldout")}
        record = {"id": trial_id(trial), "recipe": recipe_name(trial), "trial": trial,
                  "train_seconds": metrics["seconds"], "steps": metrics["steps"], "best_step": metrics["best_step"],
                  "train_pairs": metrics["train_pairs"], "final_loss": metrics["final_loss"],
                  "losses": [round(h["loss"], 4) for h in metrics["history"]]}
        for name, pairs in sets.items():
            values = evaluation.margins(rm, pairs, trial["max_length"])
            result = evaluation.metrics_from_margins(values, pairs)
            result.pop("by_source")
            record[name] = result
            record[f"{name}_margins"] = [round(v, 5) for v in values]
            record[f"{name}_ids"] = [p["pair_id"] for p in pairs] if name == "val" else None
    record["seconds"] = time.monotonic() - started
    return record


def done_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()}


def run(out: Path, backbone: str, device: str, workers: int, budget_s: float, only: str | None = None) -> None:
    import multiprocessing

    out.mkdir(parents=True, exist_ok=True)
    results = out / "trials.jsonl"
    todo = [t for t in grid() if trial_id(t) not in done_ids(results) and (only is None or only in trial_id(t))]
    print(f"{len(todo)} trials to run with {workers} workers on {device}", flush=True)
    started = time.monotonic()
    finished = 0
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
        pending = {}
        queue = list(todo)

        def submit() -> None:
            while queue and len(pending) < workers and time.monotonic() - started < budget_s:
                t = queue.pop(0)
                pending[pool.submit(run_trial, t, backbone, device)] = t

        submit()
        while pending:
            future = next(as_completed(pending))
            trial = pending.pop(future)
            try:
                record = future.result()
            except Exception as err:  # a failed trial is reported, the sweep goes on
                print(f"FAILED {trial_id(trial)}: {type(err).__name__}: {err}", flush=True)
                submit()
                continue
            with results.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            finished += 1
            elapsed = time.monotonic() - started
            rate = finished / elapsed
            print(f"[{finished}/{len(todo)} {elapsed:.0f}s eta {(len(todo) - finished) / rate:.0f}s] {record['id']}: "
                  f"val {record['val']['accuracy']:.3f} test {record['hh_test']['accuracy']:.3f} "
                  f"len-bal {record['hh_test']['length_balanced_accuracy']:.3f} "
                  f"margin {record['hh_test']['mean_margin']:+.3f} ({record['seconds']:.0f}s)", flush=True)
            submit()
    left = len(todo) - finished
    print(f"done: {finished} trials in {time.monotonic() - started:.0f}s" + (f", {left} left (budget)" if left else ""))


REFERENCE = "pointwise head=hf lr=3e-05 epochs=2 len=128 warmup=0.1"  # the default profile before this sweep
CHOSEN = "pointwise head=hf lr=0.0001 epochs=2 len=128 warmup=0.1"  # the default profile after it


def load(path: Path) -> dict[str, dict[int, dict]]:
    """{recipe: {seed: record}} from a trials.jsonl."""
    by: dict[str, dict[int, dict]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by.setdefault(record["recipe"], {})[record["trial"]["seed"]] = record
    return by


def cpu_minutes(trial: dict, rates: dict[int, float], eval_pairs: int = 304) -> float | None:
    """Minutes one training (and the evaluation) takes on the machine `rates` were measured on:
    rates[max_length] = training pairs/s there (bf16, batch 16). Pairwise and +uf trials: None."""
    if trial["objective"] != "pointwise" or trial["extra"] or trial["max_length"] not in rates:
        return None
    train_pairs = 1059
    return (train_pairs * trial["epochs"] / rates[trial["max_length"]]
            + 3 * eval_pairs / rates[trial["max_length"]]) / 60


def _seeds_in_common(a: dict[int, dict], b: dict[int, dict]) -> list[int]:
    return sorted(set(a) & set(b))


def compare(by: dict, reference: str, recipe: str, split: str, metric: str) -> dict:
    """The recipe minus the reference on `split`, paired by seed (the same pairs for the same seed)."""
    from wofn import stats

    seeds = _seeds_in_common(by[reference], by[recipe])
    a = [stats.correct_from_margins(by[reference][s][f"{split}_margins"]) for s in seeds]
    b = [stats.correct_from_margins(by[recipe][s][f"{split}_margins"]) for s in seeds]
    signs = [_signs(split, s if split == "val" else None) for s in seeds]
    return stats.paired_difference(a, b, signs, metric)


@lru_cache(maxsize=None)
def _signs(split: str, seed: int | None) -> list[int]:
    """Length signs of a split's pairs (val: the seed's own split, as `run_trial` cut it)."""
    from wofn import stats

    if split != "val":
        return stats.length_signs(_pairs(split))
    return stats.length_signs(hh_validation(_pairs("hh_train"), seed))


def ensemble(by: dict, recipe: str, split: str) -> dict:
    """The recipe's seeds as one teacher: reward = mean of the members' rewards, so the margin is the
    mean of their margins; agreement = share of members whose margin has the ensemble's sign."""
    from wofn import evaluation

    members = [by[recipe][s][f"{split}_margins"] for s in sorted(by[recipe])]
    mean = [statistics.fmean(m) for m in zip(*members)]
    result = evaluation.metrics_from_margins(mean, _pairs(split))
    result["margins"] = mean
    agreement = [sum((x > 0) == (m > 0) for x in column) / len(column) for m, column in zip(mean, zip(*members))]
    unanimous = [i for i, a in enumerate(agreement) if a == 1.0]
    result["members"] = len(members)
    result["unanimous_share"] = len(unanimous) / len(mean)
    result["unanimous_accuracy"] = (statistics.fmean(1.0 if mean[i] > 0 else 0.0 for i in unanimous)
                                    if unanimous else None)
    return result


def _filter_keys(members: np.ndarray, measure: str) -> tuple[np.ndarray, np.ndarray]:
    """(key the confidence filter ranks by, the teacher's label is right) per pair, from members'
    margins [K, n] on human pairs. The teacher labels a pair by the sign of its mean margin; the key
    is sql/filter_pairs.sql's: confidence = sigmoid(|mean margin|), and with "agreement" the share of
    members whose margin has the mean's sign (a 0 margin counts half) * 1000 + confidence."""
    mean = members.mean(0)
    right = np.where(mean > 0, 1.0, np.where(mean == 0, 0.5, 0.0))
    confidence = 1 / (1 + np.exp(-np.abs(mean)))
    if measure == "margin":
        return confidence, right
    sign = np.sign(mean)
    votes = np.where(np.sign(members) == sign, 1.0, np.where(members == 0, 0.5, 0.0)).mean(0)
    return votes * 1000 + confidence, right


def _kept_accuracy(key: np.ndarray, right: np.ndarray, quantile: float) -> np.ndarray:
    """Accuracy of the pairs with key >= the quantile of key (quantile_cont, as sql/pair_filter_flags.sql),
    along the last axis (rows: bootstrap replicates)."""
    threshold = np.quantile(key, quantile, axis=-1, keepdims=True)  # linear = DuckDB's quantile_cont
    kept = key >= threshold
    return (right * kept).sum(-1) / kept.sum(-1)


def filter_selection(by: dict, recipe: str, split: str, members: int, quantile: float = 0.5,
                     n_boot: int = 2000, seed: int = 0) -> dict:
    """What a confidence filter at `quantile` keeps, on human pairs whose truth is known: the share of
    kept pairs the teacher labels right, for a single seed (σ(margin), mean over the recipe's first
    `members` seeds) and for those seeds as one ensemble (σ(mean margin), and agreement first).

    Differences to the single seeds come with 95% bootstrap intervals: the pairs are resampled (the
    same indices for every teacher; thresholds recomputed per replicate), and the single seed of each
    replicate is drawn among the members. A proxy for the synthetic pairs: West-of-N labels
    best-vs-worst policy samples, whose truth is unknown.
    """
    seeds = sorted(by[recipe])[:members]
    margins = np.array([by[recipe][s][f"{split}_margins"] for s in seeds], dtype=float)  # [K, n]
    n = margins.shape[1]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    picks = rng.integers(0, len(seeds), size=n_boot)
    singles = [_filter_keys(margins[k:k + 1], "margin") for k in range(len(seeds))]
    single_point = float(np.mean([_kept_accuracy(key, right, quantile) for key, right in singles]))
    single_boot = np.array([_kept_accuracy(singles[k][0][idx[b]], singles[k][1][idx[b]], quantile)
                            for b, k in enumerate(picks)])
    result = {"recipe": recipe, "split": split, "members": len(seeds), "quantile": quantile, "n": n,
              "single": single_point,
              "single_all_pairs": float(np.mean([right.mean() for _, right in singles]))}
    for measure in ("margin", "agreement"):
        key, right = _filter_keys(margins, measure)
        point = float(_kept_accuracy(key, right, quantile))
        diff = _kept_accuracy(key[idx], right[idx], quantile) - single_boot
        low, high = (float(v) for v in np.percentile(diff, [2.5, 97.5]))
        result[measure] = {"kept_accuracy": point, "kept": int((key >= np.quantile(key, quantile)).sum()),
                           "difference": point - single_point, "low": low, "high": high,
                           "within_noise": low <= 0 <= high}
        result["ensemble_all_pairs"] = float(right.mean())
    return result


def filter_selection_markdown(by: dict, recipes: list[str], members: tuple[int, ...] = (3, 5),
                              quantiles: tuple[float, ...] = (0.5, 0.75)) -> str:
    """filter_selection on hh_test, one row per (recipe, members, quantile)."""
    def ci(r: dict) -> str:
        return _ci({**r, "difference": r["difference"]})

    lines = ["| recipe | members | q | single seed: kept accurate (all pairs) | "
             "ensemble σ(mean margin): kept accurate | Δ vs single (95% CI) | "
             "ensemble agreement, then margin: kept accurate | Δ vs single (95% CI) |",
             "|---|---|---|---|---|---|---|---|"]
    for recipe in recipes:
        for k in members:
            for q in quantiles:
                r = filter_selection(by, recipe, "hh_test", k, q)
                lines.append(
                    f"| {recipe} | {r['members']} | {q} | {100 * r['single']:.1f} ({100 * r['single_all_pairs']:.1f}) "
                    f"| {100 * r['margin']['kept_accuracy']:.1f} | {ci(r['margin'])} "
                    f"| {100 * r['agreement']['kept_accuracy']:.1f} | {ci(r['agreement'])} |")
    return "\n".join(lines)


def report(out: Path, rates: dict[int, float]) -> str:
    """The sweep as Markdown: every recipe (validation first), the chosen one, ensembles."""
    by = load(out / "trials.jsonl")

    def mean(recipe: str, split: str, key: str) -> float:
        return statistics.fmean(r[split][key] for r in by[recipe].values())

    def sd(recipe: str, split: str, key: str) -> float:
        values = [r[split][key] for r in by[recipe].values()]
        return statistics.stdev(values) if len(values) > 1 else 0.0

    order = sorted(by, key=lambda r: -mean(r, "val", "accuracy"))
    lines = ["| recipe | seeds | val acc | val len-bal | Δ val acc vs old default (95% CI) | test acc | test len-bal | "
             "test mean margin | UF held-out acc | GPU s / training | CPU min / training |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for recipe in order:
        trial = next(iter(by[recipe].values()))["trial"]
        cpu = cpu_minutes(trial, rates)
        delta = "–" if recipe == REFERENCE or trial["extra"] else _ci(compare(by, REFERENCE, recipe, "val", "accuracy"))
        lines.append(
            f"| {recipe} | {len(by[recipe])} | {100 * mean(recipe, 'val', 'accuracy'):.1f} "
            f"± {100 * sd(recipe, 'val', 'accuracy'):.1f} "
            f"| {100 * mean(recipe, 'val', 'length_balanced_accuracy'):.1f} | {delta} "
            f"| {100 * mean(recipe, 'hh_test', 'accuracy'):.1f} ± {100 * sd(recipe, 'hh_test', 'accuracy'):.1f} "
            f"| {100 * mean(recipe, 'hh_test', 'length_balanced_accuracy'):.1f} "
            f"| {mean(recipe, 'hh_test', 'mean_margin'):+.3f} | {100 * mean(recipe, 'uf_heldout', 'accuracy'):.1f} "
            f"| {statistics.fmean(r['train_seconds'] for r in by[recipe].values()):.0f} "
            f"| {'–' if cpu is None else f'{cpu:.1f}'} |")
    top = [REFERENCE] + [r for r in order if r != REFERENCE][:5]
    lines += ["", ensembles_markdown(by, top), "", filter_selection_markdown(by, [CHOSEN, top[1]])]
    return "\n".join(lines)


def ensembles_markdown(by: dict, recipes: list[str]) -> str:
    """Each recipe's seeds as one teacher (mean reward) against the single seeds, on hh_test."""
    from wofn import stats

    signs = _signs("hh_test", None)
    lines = ["| recipe | members | single seed acc | ensemble acc | Δ acc (95% CI) | single len-bal | "
             "ensemble len-bal | Δ len-bal (95% CI) | ensemble mean margin | unanimous pairs | accuracy on them |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for recipe in recipes:
        seeds = sorted(by[recipe])
        single = [stats.correct_from_margins(by[recipe][s]["hh_test_margins"]) for s in seeds]
        result = ensemble(by, recipe, "hh_test")
        joint = stats.correct_from_margins(result["margins"])
        diff = {m: stats.paired_difference(single, [joint] * len(seeds), signs, m) for m in stats.METRICS}
        lines.append(
            f"| {recipe} | {len(seeds)} | {100 * diff['accuracy']['a']:.1f} | {100 * result['accuracy']:.1f} "
            f"| {_ci(diff['accuracy'])} | {100 * diff['length_balanced_accuracy']['a']:.1f} "
            f"| {100 * result['length_balanced_accuracy']:.1f} | {_ci(diff['length_balanced_accuracy'])} "
            f"| {result['mean_margin']:+.3f} | {100 * result['unanimous_share']:.0f}% "
            f"| {100 * result['unanimous_accuracy']:.1f} |")
    return "\n".join(lines)


def plot(by: dict, path: Path, chosen: str) -> Path:
    """Validation accuracy (what recipes are chosen by) against hh_test length-balanced accuracy, per
    recipe (mean over seeds, bars: sd), the reference and the chosen recipe marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    for recipe, seeds in by.items():
        trial = next(iter(seeds.values()))["trial"]
        val = [100 * r["val"]["accuracy"] for r in seeds.values()]
        test = [100 * r["hh_test"]["length_balanced_accuracy"] for r in seeds.values()]
        style = {"hf": ("o", "tab:blue"), "mean": ("s", "tab:orange")}[trial["head"]]
        marker, color = ("D", "tab:green") if trial["objective"] == "pairwise" else style
        if trial["extra"]:
            marker, color = "^", "tab:purple"
        ax.errorbar(statistics.fmean(val), statistics.fmean(test), xerr=statistics.stdev(val),
                    yerr=statistics.stdev(test), fmt=marker, color=color, alpha=0.45, ms=5, elinewidth=0.6)
        if recipe in (chosen, REFERENCE):
            ax.annotate("chosen" if recipe == chosen else "old default",
                        (statistics.fmean(val), statistics.fmean(test)),
                        xytext=(6, -12), textcoords="offset points", fontsize=9)
    for label, (marker, color) in (("hf head", ("o", "tab:blue")), ("mean head", ("s", "tab:orange")),
                                   ("pairwise", ("D", "tab:green")), ("+UF pairs", ("^", "tab:purple"))):
        ax.plot([], [], marker, color=color, label=label)
    ax.axhline(60, color="grey", lw=0.8, ls="--")
    ax.axhline(50, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("validation accuracy, % (5 seeds, each its own 10% split)")
    ax.set_ylabel("hh_test length-balanced accuracy, %")
    ax.set_title("40 base-RM recipes x 5 seeds (mean +- sd)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _ci(result: dict) -> str:
    from wofn import stats

    return stats.describe(result, unit="")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m wofn.experiment.teacher_sweep", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train and evaluate the trials not yet in DIR/trials.jsonl")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--backbone", default="minilm-l6", help="RM backbone spec (a shipped name or a model folder)")
    r.add_argument("--device", default="cpu")
    r.add_argument("--workers", type=int, default=1)
    r.add_argument("--budget-s", type=float, default=math.inf, help="start no trial after this many seconds")
    r.add_argument("--only", help="run only the trials whose id contains this text")
    rp = sub.add_parser("report", help="print the sweep's table (Markdown)")
    rp.add_argument("--out", type=Path, required=True)
    rp.add_argument("--plot", type=Path, help="also draw validation vs test accuracy per recipe into this PNG")
    rp.add_argument("--chosen", default=CHOSEN, help="the recipe to mark as chosen in the plot")
    rp.add_argument("--cpu-rate", action="append", default=[], metavar="MAX_LENGTH=PAIRS_PER_S",
                    help="training pairs/s measured on the CPU machine at that max_length (for the CPU minutes)")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.out, args.backbone, args.device, args.workers, args.budget_s, args.only)
    else:
        rates = {int(k): float(v) for k, v in (item.split("=", 1) for item in args.cpu_rate)}
        print(report(args.out, rates))
        if args.plot:
            plot(load(args.out / "trials.jsonl"), args.plot, args.chosen)


if __name__ == "__main__":
    main()
