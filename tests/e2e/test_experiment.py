"""`wofn experiment`: config validation, a real tiny grid end to end (Beam jobs, DuckDB, training), resume,
the report, and the Dagster job over the same folder."""

import json
import re
import statistics

import pyarrow.parquet as pq
import pytest

from wofn import cli, models, profiles
from wofn.experiment import config as xconfig
from wofn.experiment import report as reporting
from wofn.experiment import runner
from wofn.paths import DATA_DIR

TINY = """
name: tiny
profile: tiny
settings: {max_prompts: 6, max_human_pairs: 40, max_eval_pairs: 24, confidence_quantile: 0.5, logprob_quantile: 0.2}
grid:
  strategies: [west_of_n, random_pair]
  n: [2, 4]
  filters: [none, both]
  seeds: [0, 1]
  length: [none, residual, band+balanced]
train:
  - {strategy: west_of_n, n: 4, length: none}
  - {strategy: random_pair, n: 2, filter: none, length: none}
  - {strategy: west_of_n, n: 4, filter: none, length: [residual, band+balanced]}
"""


def parse(text: str):
    return xconfig.parse(text, "cfg.yaml")


def test_config_cells_are_seed_major_and_limited_to_the_train_slices():
    cfg = parse(TINY)
    assert cfg.max_n == 4
    assert cfg.train == (("west_of_n", 4, "none", "none"), ("west_of_n", 4, "none", "residual"),
                         ("west_of_n", 4, "none", "band+balanced"), ("west_of_n", 4, "both", "none"),
                         ("random_pair", 2, "none", "none"))
    assert [c.id for c in cfg.cells()] == [
        "west_of_n-n4-none-seed0", "west_of_n-n4-none-len-residual-seed0", "west_of_n-n4-none-len-band+balanced-seed0",
        "west_of_n-n4-both-seed0", "random_pair-n2-none-seed0",
        "west_of_n-n4-none-seed1", "west_of_n-n4-none-len-residual-seed1", "west_of_n-n4-none-len-band+balanced-seed1",
        "west_of_n-n4-both-seed1", "random_pair-n2-none-seed1"]
    full = parse(TINY.split("train:")[0])
    assert len(full.cells()) == 2 * 2 * 2 * 3 * 2  # no train key: every cell of the grid
    no_length = parse(TINY.split("train:")[0].replace("  length: [none, residual, band+balanced]\n", ""))
    assert no_length.lengths == ("none",) and len(no_length.cells()) == 2 * 2 * 2 * 2


def test_config_digest_follows_the_content_not_comments_or_layout():
    cfg = parse(TINY)
    assert parse("# a note on the run\n" + TINY.replace("seeds: [0, 1]", "seeds: [0,  1]  # two")).digest == cfg.digest
    assert parse(TINY.replace("seeds: [0, 1]", "seeds: [0, 2]")).digest != cfg.digest


def test_report_header_shows_the_shipped_data_relative_to_the_repository(tmp_path):
    prompts = tmp_path / "own_prompts.parquet"
    cfg = parse(TINY.replace("settings: {", f"settings: {{unlabeled_prompts: {prompts}, "))
    header = runner.report_header(runner.Experiment(cfg, tmp_path / "home"))
    assert header["data"] == f"data/hh_train.parquet (human), data/hh_test.parquet (evaluation), {prompts} (prompts)"


def test_split_length():
    assert [xconfig.split_length(v) for v in xconfig.LENGTHS] == [
        ("none", False), ("residual", False), ("residual_per_prompt", False), ("band", False), ("finished", False),
        ("none", True), ("residual", True), ("residual_per_prompt", True), ("band", True), ("finished", True)]
    with pytest.raises(ValueError, match="length must be one of"):
        xconfig.split_length("short")


def test_filter_quantiles():
    settings = profiles.DEFAULT.replace(confidence_quantile=0.5, logprob_quantile=0.1)
    assert [xconfig.filter_quantiles(f, settings) for f in xconfig.FILTERS] == [
        (0.0, 0.0), (0.5, 0.0), (0.0, 0.1), (0.5, 0.1)]
    with pytest.raises(ValueError, match="filter must be one of"):
        xconfig.filter_quantiles("strict", settings)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t + "\nextra: 1\n", r"unknown key\(s\) \['extra'\]"),
    (lambda t: t.replace("name: tiny", "name: ../up"), "name must be a folder name"),
    (lambda t: t.replace("profile: tiny", "profile: huge"), "profile must be one of"),
    (lambda t: t.replace("max_prompts: 6", "max_promts: 6"), r"settings: unknown setting\(s\) \['max_promts'\]"),
    (lambda t: t.replace("[west_of_n, random_pair]", "[west_of_n, best_of_n]"), r"grid.strategies: \['best_of_n'\]"),
    (lambda t: t.replace("n: [2, 4]", "n: [1, 4]"), "grid.n: every N must be an integer >= 2"),
    (lambda t: t.replace("  seeds: [0, 1]\n", ""), r"missing \['seeds'\]"),
    (lambda t: t.replace("{strategy: west_of_n, n: 4, length: none}", "{strategy: west_of_n, n: 8, length: none}"),
     r"train\[0\].n .*must be in the grid"),
    (lambda t: t.replace("{strategy: west_of_n, n: 4, length: none}", "{strategy: west_of_n, size: 4}"),
     r"train\[0\]: expected a mapping"),
    (lambda t: t + "\nteacher_seed: 5\n", "teacher_seed 5 must be one of grid.seeds"),
    (lambda t: t.replace("seeds: [0, 1]", "seeds: [0, 0]"), r"grid.seeds: repeated values"),
    (lambda t: t.replace("max_prompts: 6", "max_prompts: 6, teacher: pairwise"),
     "settings.teacher must be 'pointwise'"),
    (lambda t: t.replace("max_prompts: 6", "max_prompts: 6, length_control: band"),
     r"settings: \['length_control'\] are set per arm in an experiment: list them under grid.length"),
    (lambda t: "[1, 2", "not valid YAML"),
    (lambda t: t + "\ntune: {rm_dropout: [0.1]}\n", r"tune: \['rm_dropout'\] cannot be tuned"),
    (lambda t: t + "\ntune: {rm_epochs: [1, -2]}\n", r"tune.rm_epochs: rm_epochs must be a number > 0, got -2"),
    (lambda t: t + "\ntune: {rm_head: [mean, cls]}\n",
     r"tune.rm_head: rm_head must be one of auto, hf, mean, last; got 'cls'"),
    (lambda t: t + "\ntune: {rm_warmup_ratio: [0, 1]}\n",
     r"tune.rm_warmup_ratio: rm_warmup_ratio must be a number in \[0, 1\), got 1"),
    (lambda t: t + "\ntune: {rm_epochs: [1, 2]}\ntune_seeds: [0, 0]\n", "tune_seeds must be distinct integers"),
    (lambda t: t + "\ntune_seeds: [0, 1]\n", "tune_seeds needs a tune: mapping"),
    (lambda t: t.replace("max_prompts: 6", "max_prompts: 6, rm_val_fraction: 0") + "\ntune: {rm_epochs: [1, 2]}\n",
     "tune needs a validation split"),
    (lambda t: t.replace("max_prompts: 6", "max_prompts: 6, prompt_sources: [unlabeled, forum]"),
     r"settings.prompt_sources must be a non-empty list"),
    (lambda t: t.replace("[none, residual, band+balanced]", "[none, shortest]"), r"grid.length: \['shortest'\]"),
    (lambda t: t.replace("max_prompts: 6", "max_prompts: 6, confidence_measure: agreement"),
     r"settings.confidence_measure 'agreement' needs a teacher ensemble \(teacher_members >= 2\)"),
    (lambda t: t.replace("max_prompts: 6", "max_prompts: 6, teacher_members: 0"),
     r"teacher_members must be an integer in \[1, 64\]"),
    (lambda t: t.replace("max_prompts: 6", "max_prompts: 6, confidence_measure: votes"),
     "settings.confidence_measure must be"),
    (lambda t: t.replace("n: 4, filter: none, length: [residual", "n: 4, filter: none, length: [band"),
     r"train\[2\].length .*must be in the grid"),
])
def test_config_errors_name_the_file_and_key(edit, message):
    with pytest.raises(xconfig.ConfigError, match=message) as info:
        parse(edit(TINY))
    assert str(info.value).startswith("cfg.yaml")


BENCH = {"sampling": {"ours": {"float32": {"generated_tokens": 100, "candidates": 10, "generated_tokens_per_s": 50.0}}},
         "scoring": {"ours": {"float32": {"sequences_per_s": 20.0}}},
         "training": {"ours": {"fp32": {"pairs_per_s": 4.0}, "bf16": {"pairs_per_s": 8.0}}}}


def test_estimate_from_benchmark_rates():
    cfg = parse(TINY)
    est = runner.estimate(cfg, bench=BENCH)
    assert (est["prompts"], est["candidates"], est["human_pairs"], est["eval_pairs"]) == (6, 24, 40, 24)
    assert est["seconds"]["sampling"] == pytest.approx(24 * 10 / 50)
    assert est["seconds"]["scoring"] == pytest.approx(24 / 20)
    one_base = 40 * (1 - 0.1) * 1.0 / 4.0 + 2 * 24 / 20  # tiny profile: fp32, 1 epoch, 10% validation
    assert est["seconds"]["base_models"] == pytest.approx(2 * one_base)
    # none: all 6 prompts' pairs (also the two length-controlled arms); both: 6 x 0.5 x 0.8
    per_seed = [40 + 6, 40 + 6, 40 + 6, 40 + 6 * 0.5 * 0.8, 40 + 6]
    assert est["seconds"]["students"] == pytest.approx(
        2 * sum(p * 0.9 / 4.0 + 2 * 24 / 20 for p in per_seed))
    assert est["students"] == 10
    with pytest.raises(ValueError, match="run `make bench` first"):
        runner.estimate(cfg, bench={k: v for k, v in BENCH.items() if k != "training"})


def test_estimate_scales_the_benchmarks_rates_to_the_runs_backbone():
    assert models.reward_model_matmul_params("minilm-l6") == 10_993_153  # make bench's training and scoring RM
    tiny = models.reward_model_matmul_params("tiny-bert")  # the tiny profile's rm_backbone
    measured = {"mfu": {"flop_params": 4 * tiny}}
    bench = {**BENCH, "training": {"ours": {"fp32": {"pairs_per_s": 4.0, **measured},
                                            "bf16": {"pairs_per_s": 8.0, **measured}}}}
    cfg = parse(TINY)
    plain, scaled = runner.estimate(cfg, bench=BENCH), runner.estimate(cfg, bench=bench)
    assert scaled["reward_model_matmul_params"] == {"run": tiny, "benchmark": 4 * tiny, "backbone": "tiny-bert",
                                                    "rate_scale": 4.0}
    assert scaled["rates"]["training_pairs_per_s"] == 4 * plain["rates"]["training_pairs_per_s"]
    assert scaled["rates"]["scoring_sequences_per_s"] == 4 * plain["rates"]["scoring_sequences_per_s"]
    assert scaled["seconds"]["base_models"] == pytest.approx(plain["seconds"]["base_models"] / 4)
    assert scaled["seconds"]["sampling"] == plain["seconds"]["sampling"]  # the policy is not the RM
    assert "tiny-bert 0.1M: its rates x 4)" in runner.format_estimate(scaled)
    assert "its rates x" not in runner.format_estimate(plain)  # a benchmark line without parameter counts
    missing = runner.estimate(parse(TINY.replace("max_prompts: 6", "max_prompts: 6, rm_backbone: /no/such/model")),
                              bench=bench)
    assert missing["rates"]["training_pairs_per_s"] == 4.0 and missing["reward_model_matmul_params"]["run"] is None
    assert "/no/such/model's config could not be read here to scale them" in runner.format_estimate(missing)


@pytest.mark.parametrize("native", [True, False, None])
def test_estimate_warns_of_bf16_steps_on_a_cpu_that_emulates_it(monkeypatch, tmp_path, native):
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: native)
    bf16 = parse(TINY.replace("max_prompts: 6", "max_prompts: 6, policy_dtype: bfloat16, rm_bf16: true"))
    est = runner.estimate(bf16, bench=BENCH)
    warned = "WARNING: this CPU has no native bf16" in runner.format_estimate(est)
    if native is False:  # bf16 sampling and training; scoring stays float32
        assert est["emulated_bf16_steps"] == ["sampling", "base_models", "students"] and warned
        (tmp_path / "experiments" / "tiny").mkdir(parents=True)
        (tmp_path / "experiments" / "tiny" / "sampled.json").write_text("{}")  # a finished step is not warned of
        assert runner.estimate(bf16, home=tmp_path, bench=BENCH)["emulated_bf16_steps"] == ["base_models", "students"]
    else:  # native bf16, or a machine that cannot say
        assert est["emulated_bf16_steps"] == [] and not warned
    assert runner.estimate(parse(TINY), bench=BENCH)["emulated_bf16_steps"] == []  # the tiny profile: fp32


def test_estimate_counts_a_teacher_ensembles_members():
    est = runner.estimate(parse(TINY.replace("max_prompts: 6", "max_prompts: 6, teacher_members: 3")), bench=BENCH)
    one_base = 40 * (1 - 0.1) * 1.0 / 4.0 + 2 * 24 / 20
    assert est["seconds"]["base_models"] == pytest.approx(3 * one_base)  # seeds 0, 1 and the teacher's 2
    assert est["seconds"]["scoring"] == pytest.approx(3 * 24 / 20)


def test_estimate_says_when_the_sampling_rate_was_measured_at_other_batch_rows():
    cfg = parse(TINY)  # the torch engine decodes the profile's sample_slots (256) at once, whatever N
    assert cfg.settings.sample_slots == 256
    assert "rows decoded at once" not in runner.format_estimate(runner.estimate(cfg, bench=BENCH))
    sampling = {**BENCH["sampling"], "config": {"n": 8, "ours_slots": 512}}
    est = runner.estimate(cfg, bench={**BENCH, "sampling": sampling})
    assert est["sampling_rows_per_batch"] == {"run": 256, "benchmark": 512}
    assert "at 512 rows decoded at once (slots); this run has 256: expect it slower" in runner.format_estimate(est)
    fewer = runner.estimate(cfg, bench={**BENCH, "sampling": {**sampling, "config": {"n": 8, "ours_slots": 64}}})
    assert "at 64 rows decoded at once (slots); this run has 256: expect it faster" in runner.format_estimate(fewer)
    before = {**BENCH, "sampling": {**sampling, "config": {"n": 8, "ours_batch_prompts": 8}}}  # static batches
    assert runner.estimate(cfg, bench=before)["sampling_rows_per_batch"] == {"run": 256, "benchmark": 64}
    vllm = runner.estimate(parse(TINY.replace("max_prompts: 6", "max_prompts: 6, sampling_engine: vllm")),
                           bench=before)
    assert vllm["sampling_rows_per_batch"] == {"run": 32, "benchmark": 64}  # N=4 x 8 prompts a batch


def test_estimate_counts_prompts_from_every_source_and_extra_pairs():
    text = TINY.replace("max_prompts: 6", "max_prompts: null")
    plain = runner.estimate(parse(text), bench=BENCH)
    more = runner.estimate(parse(text.replace("max_prompts: null", "max_prompts: null, prompt_sources: [unlabeled, "
                                              f"human_pairs], extra_human_pairs: {DATA_DIR / 'uf_train.parquet'}, "
                                              "max_extra_human_pairs: 10")), bench=BENCH)
    assert plain["prompts"] == 809 and plain["human_pairs"] == 40
    assert more["prompts"] == 809 + 40 and more["human_pairs"] == 50  # the 40 training pairs' prompts are new


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    cfg_path = root / "tiny.yaml"
    cfg_path.write_text(TINY.replace("max_human_pairs: 40,", "max_human_pairs: 40, human_holdout: 0.25,"))
    report = root / "docs" / "results.md"
    assert cli.main(["experiment", str(cfg_path), "--home", str(root / "home"), "--report", str(report)]) == 0
    cfg = xconfig.load(cfg_path)
    return cfg, runner.Experiment(cfg, root / "home"), report, cfg_path


def test_tiny_run_samples_once_at_max_n_and_reuses_the_first_k(tiny_run):
    cfg, exp, _, _ = tiny_run
    full = pq.read_table(exp.path("candidates")).to_pylist()
    assert len({r["prompt_id"] for r in full}) == 6
    assert sorted({r["candidate_idx"] for r in full}) == [0, 1, 2, 3]
    first2 = pq.read_table(exp.subset(2, "candidates")).to_pylist()
    key = lambda r: (r["prompt_id"], r["candidate_idx"])  # noqa: E731
    assert sorted((key(r), r["response"]) for r in first2) == sorted(
        (key(r), r["response"]) for r in full if r["candidate_idx"] < 2)
    scores2 = pq.read_table(exp.subset(2, "scores")).to_pylist()
    full_scores = {key(r): r["reward"] for r in pq.read_table(exp.path("scores")).to_pylist()}
    assert {key(r): r["reward"] for r in scores2} == {k: v for k, v in full_scores.items() if k[1] < 2}
    # pairs at N=2 only use candidates 0 and 1
    pairs2 = pq.read_table(exp.pairs_dir("west_of_n", 2, 0)).to_pylist()
    assert pairs2 and all({p["chosen_idx"], p["rejected_idx"]} == {0, 1} for p in pairs2)


def test_tiny_run_pair_stats_cover_the_grid_and_filters_only_remove(tiny_run):
    cfg, exp, _, _ = tiny_run
    stats = json.loads(exp.path("pair_stats.json").read_text())
    assert len(stats) == 2 * 2 * 2 * 3 * 2
    by = {(s["strategy"], s["n"], s["filter"], s["seed"]): s for s in stats if s["length"] == "none"}
    for s in stats:
        if s["length"].endswith("balanced") and s["pairs"]:
            assert s["chosen_longer_share"] == s["chosen_shorter_share"]
    for strategy in cfg.strategies:
        for n in cfg.ns:
            unfiltered = pq.read_table(exp.pairs_dir(strategy, n, 0)).num_rows
            assert by[(strategy, n, "none", 0)]["pairs"] == unfiltered
            assert 0 < by[(strategy, n, "both", 0)]["pairs"] < unfiltered
            assert by[(strategy, n, "none", 0)]["chosen_logprob_mean"] < 0


def test_tiny_run_trains_and_evaluates_one_student_per_cell(tiny_run):
    cfg, exp, _, _ = tiny_run
    results = exp.results()
    held = len(exp.holdout_pairs())  # human_holdout: in no model's training pairs, evaluated beside eval_pairs
    assert 0 < held < 40 and {p["pair_id"] for p in exp.holdout_pairs()}.isdisjoint(
        p["pair_id"] for p in exp.human_pairs())
    for model in results["bases"] + results["cells"]:
        assert model["holdout"]["eval_n"] == len(model["holdout"]["margins"]) == held
        assert model["holdout"]["accuracy"] == pytest.approx(
            statistics.mean(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in model["holdout"]["margins"]))
    assert [b["seed"] for b in results["bases"]] == [0, 1]
    assert results["bases"][0]["revision"] != results["bases"][1]["revision"]  # seeds differ
    assert [c["cell"] for c in results["cells"]] == [c.id for c in cfg.cells()]
    stats = {(s["strategy"], s["n"], s["filter"], s["length"], s["seed"]): s for s in results["pair_stats"]}
    for cell in results["cells"]:
        assert 0 <= cell["accuracy"] <= 1 and cell["eval_n"] == 24
        assert cell["mix"]["human_pairs"] == 40 - held
        assert cell["mix"]["synthetic_pairs"] == cell["pairs"]["pairs"] == \
            stats[(cell["strategy"], cell["n"], cell["filter"], cell["length"], cell["seed"])]["pairs"]
        assert cell["lineage"]["teacher_revision"] == results["bases"][0]["revision"]
    assert not exp.path("students").exists() or not any(exp.path("students").iterdir())  # keep_students: false
    progress = json.loads(exp.path("progress.json").read_text())
    assert (progress["cells_done"], progress["cells_total"]) == (10, 10)


def test_report_has_every_arm_the_base_and_the_length_baselines(tiny_run):
    cfg, exp, report, cfg_path = tiny_run
    text = report.read_text()
    assert f"wofn experiment {cfg_path}" in text or "wofn experiment" in text
    assert cfg.text.strip() in text
    assert "| **base** (human pairs only) | – | – | – | – | 2 |" in text
    assert "[longer response wins]" in text and "[shorter response wins]" in text
    cells = exp.results()["cells"]
    for strategy, n, filter_name, length in cfg.train:
        arm = [c["pairs"] for c in cells
               if (c["strategy"], c["n"], c["filter"], c["length"]) == (strategy, n, filter_name, length)]
        longer = 100 * statistics.mean(p["chosen_longer_share"] for p in arm)
        shorter = 100 * statistics.mean(p["chosen_shorter_share"] for p in arm)
        assert re.search(rf"\| student \| {strategy} \| {n} \| {filter_name} \| {re.escape(length)} \| 2 \| [0-9]+ \| "
                         rf"{longer:.0f}% / {shorter:.0f}% \|", text)
    assert "Students trained: **10 of 10** cells." in text
    # Δ acc / Δ len-bal: paired by seed, with a 95% interval over seeds and pairs from the stored margins
    for row in reporting.arms_table(exp.results(), cfg):
        for metric in ("accuracy", "length_balanced_accuracy"):
            ci = row[f"ci_{metric}"]
            assert ci["seeds"] == 2 and ci["low"] <= ci["difference"] <= ci["high"]
            assert ci["difference"] == pytest.approx(statistics.mean(row[f"delta_{metric}"]))
            assert reporting.fmt_delta(row, metric) in text
    assert re.search(r"\| [+-][0-9.]+ \[[+-][0-9.]+, [+-][0-9.]+\]( \(noise\))? \|", text)
    # the two halves of the length-balanced accuracy, base and every arm, from the stored evaluations
    assert ("| model | strategy | N | filter | length control | acc, chosen longer | Δ | "
            "acc, chosen shorter | Δ |") in text
    base = exp.results()["bases"]
    longer = [100 * b["chosen_longer_accuracy"] for b in base]
    assert f"| **base** | – | – | – | – | {statistics.mean(longer):.1f} ± {statistics.stdev(longer):.1f} | – |" in text
    for strategy, n, filter_name, length in cfg.train:
        assert re.search(rf"\| student \| {strategy} \| {n} \| {filter_name} \| {re.escape(length)} \| "
                         r"[0-9.]+ ± [0-9.]+ \| [+-][0-9.]+ ± [0-9.]+ \|", text)
    assert "| west_of_n | 4 | none | none | residual | band+balanced |" not in text  # pivot header below
    assert "| strategy | N | filter | none | residual | band+balanced |" in text
    assert "estimate when resumed" not in text  # one run so far
    for name in reporting.PLOTS:
        png = report.parent / "results" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"results/{name}" in text
    assert exp.path("results.md").exists()
    # the second held-out set: each set, then both as one, every arm's Δ with its interval
    assert "### A second held-out set" in text
    results = exp.results()
    held = len(exp.holdout_pairs())
    for name, n in (("evaluation pairs", 24), ("human_holdout pairs", held), ("both, as one set", 24 + held)):
        assert re.search(rf"\| {name} \| {n} \| \*\*base\*\* \| – \| [0-9.]+ ± [0-9.]+ \|", text)
        view = results if name == "evaluation pairs" else reporting.on_held_out_set(
            results, "holdout" if name.startswith("human") else "pooled")
        for row in reporting.arms_table(view, cfg):
            assert row["ci_accuracy"]["n"] == 2 * n  # two seeds' pairs
            assert (f"| {name} | | student {row['strategy']} N={row['n']} {row['filter']} | {row['length']} | "
                    f"{reporting.fmt(row['accuracy'])} | {reporting.fmt_delta(row, 'accuracy')} |") in text


def test_rerun_resumes_only_missing_work_and_keeps_the_discussion(tiny_run):
    cfg, exp, report, cfg_path = tiny_run
    lost = exp.cell_file(cfg.cells()[2])
    before = json.loads(lost.read_text())
    kept = {c.id: exp.cell_file(c).stat().st_mtime_ns for c in cfg.cells() if exp.cell_file(c) != lost}
    candidates = {p: p.stat().st_mtime_ns for p in exp.path("candidates").glob("*.parquet")}
    lost.unlink()
    report.write_text(report.read_text().replace("(to be written)", "Our reading: tiny models, no signal."))
    assert cli.main(["experiment", str(cfg_path), "--home", str(exp.root.parent.parent), "--report", str(report)]) == 0
    after = json.loads(lost.read_text())
    assert after["accuracy"] == before["accuracy"] and after["lineage"]["revision"] == before["lineage"]["revision"]
    assert {c.id: exp.cell_file(c).stat().st_mtime_ns for c in cfg.cells() if exp.cell_file(c) != lost} == kept
    assert {p: p.stat().st_mtime_ns for p in exp.path("candidates").glob("*.parquet")} == candidates
    assert "Our reading: tiny models, no signal." in report.read_text()
    runs = exp.path("estimates.jsonl").read_text().splitlines()
    assert len(runs) == 2 and json.loads(runs[1])["estimate"]["students"] == 1
    assert "estimate when resumed at" in report.read_text()


def test_dagster_job_reports_the_same_run(tiny_run, monkeypatch):
    from dagster import DagsterInstance

    from wofn_dagster.experiment import experiment
    from wofn_dagster.resources import WofnHomeResource

    cfg, exp, report, cfg_path = tiny_run
    out = report.parent / "from_dagster.md"
    with DagsterInstance.ephemeral() as instance:
        result = experiment.execute_in_process(
            run_config={"ops": {"experiment_estimate": {"config": {"config": str(cfg_path)}},
                                "experiment_report": {"config": {"config": str(cfg_path), "report": str(out)}}}},
            resources={"home": WofnHomeResource(root=str(exp.root.parent.parent))}, instance=instance)
        assert result.success
        [materialization] = [e.materialization for e in result.all_events if e.is_step_materialization]
        assert materialization.asset_key.path == ["experiment_results", "tiny"]
        assert materialization.metadata["cells"].value == 10
        estimate = result.output_for_node("experiment_estimate")
        assert estimate == str(cfg_path)
    assert "| student | west_of_n | 4 | both | none | 2 |" in out.read_text()


def test_dagster_job_runs_a_grid_from_scratch(tmp_path):
    """The job does the work itself: sampling, base RM, scoring, pair sets, the student, the report."""
    from dagster import DagsterInstance

    from wofn_dagster.experiment import experiment
    from wofn_dagster.resources import WofnHomeResource

    cfg_path = tmp_path / "one.yaml"
    cfg_path.write_text(TINY.split("grid:")[0].replace("name: tiny", "name: one") +
                        "grid: {strategies: [west_of_n], n: [2], filters: [none], seeds: [0]}\n"
                        "tune: {rm_learning_rate: [0.001, 0.0001]}\ntune_seeds: [0, 1]\n")
    out = tmp_path / "one.md"
    with DagsterInstance.ephemeral() as instance:
        result = experiment.execute_in_process(
            run_config={"ops": {"experiment_estimate": {"config": {"config": str(cfg_path)}},
                                "experiment_report": {"config": {"config": str(cfg_path), "report": str(out)}}}},
            resources={"home": WofnHomeResource(root=str(tmp_path / "home"))}, instance=instance)
        messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert result.success
    assert any("cell 1/1 west_of_n-n2-none-seed0" in m for m in messages)  # progress in the run's log
    exp = runner.Experiment(xconfig.load(cfg_path), tmp_path / "home")
    assert json.loads(exp.path("sampled.json").read_text())["candidates"] == 6 * 2
    tuned = json.loads(exp.path("tune", "chosen.json").read_text())
    assert [t["settings"]["rm_learning_rate"] for t in tuned["trials"]] == [0.001, 0.0001]
    best = max(tuned["trials"], key=lambda t: (t["val_accuracy"], -t["val_loss"]))
    assert tuned["settings"] == best["settings"]
    for trial in tuned["trials"]:  # each combination once per tune seed, the mean decides
        assert trial["seeds"] == [0, 1] and len(trial["val_accuracy_by_seed"]) == 2
        assert trial["val_accuracy"] == pytest.approx(statistics.mean(trial["val_accuracy_by_seed"]))
    manifest = json.loads((exp.base_dir(0) / "model" / "manifest.json").read_text())
    assert manifest["train_config"]["learning_rate"] == tuned["settings"]["rm_learning_rate"]
    assert exp.settings.rm_learning_rate == tuned["settings"]["rm_learning_rate"]  # a new Experiment reads it
    [cell] = exp.results()["cells"]
    assert cell["cell"] == "west_of_n-n2-none-seed0" and 0 <= cell["accuracy"] <= 1
    assert "| student | west_of_n | 2 | none | none | 1 |" in out.read_text()
    assert "| rm_learning_rate | validation accuracy | validation loss | chosen |" in out.read_text()


ENSEMBLE = """
name: tiny_ensemble
profile: tiny
settings: {max_prompts: 6, max_human_pairs: 40, max_eval_pairs: 24, confidence_quantile: 0.5, logprob_quantile: 0.0,
           teacher_members: 2, confidence_measure: agreement}
grid:
  strategies: [west_of_n]
  n: [4]
  filters: [confidence]
  seeds: [0]
  length: [band+balanced]
"""


def test_an_ensemble_teacher_scores_and_filters_by_agreement(tmp_path):
    cfg_path = tmp_path / "ensemble.yaml"
    cfg_path.write_text(ENSEMBLE)
    report = tmp_path / "results.md"
    assert cli.main(["experiment", str(cfg_path), "--home", str(tmp_path / "home"), "--report", str(report)]) == 0
    exp = runner.Experiment(xconfig.load(cfg_path), tmp_path / "home")
    teacher = json.loads((exp.path("teacher") / "manifest.json").read_text())
    assert (teacher["kind"] == "reward_ensemble"
            and teacher["members"] == ["../base/seed=0/model", "../base/seed=1/model"])
    scores = pq.read_table(exp.path("scores")).to_pylist()
    assert all(len(r["member_rewards"]) == 2 and r["reward"] == pytest.approx(sum(r["member_rewards"]) / 2, abs=1e-6)
               for r in scores)
    pairs_table = pq.read_table(exp.pairs_dir("west_of_n", 4, 0, "band")).to_pylist()
    assert pairs_table and all(r["agreement"] in (0.0, 0.5, 1.0) for r in pairs_table)
    cell = json.loads(next(exp.path("cells").glob("*.json")).read_text())
    assert cell["lineage"]["teacher_revision"] == teacher["revision"]
    assert json.loads(exp.path("teacher_result.json").read_text())["seeds"] == [0, 1]
    assert "| **teacher** (ensemble of seeds 0, 1) |" in report.read_text()


def test_bases_only_trains_and_reports_the_bases_a_full_run_then_reuses(tmp_path, capsys):
    from wofn.experiment import bases

    cfg_path = tmp_path / "bases.yaml"
    cfg_path.write_text(TINY.split("train:")[0].replace("name: tiny", "name: bases")
                        .replace("max_human_pairs: 40,", "max_human_pairs: 40, human_holdout: 0.25,"))
    home = tmp_path / "home"
    assert bases.main([str(cfg_path), "--seeds", "1", "--home", str(home)]) == 0
    [line] = capsys.readouterr().out.splitlines()
    summary = json.loads(line)
    assert summary["seed"] == 1 and 0 <= summary["accuracy"] <= 1 and "length_balanced_accuracy" in summary
    assert set(summary["holdout"]) == {"accuracy", "length_balanced_accuracy", "mean_margin"}
    exp = runner.Experiment(xconfig.load(cfg_path), home)
    result = exp.base_dir(1) / runner.EVAL_FILE
    stamp = result.stat().st_mtime_ns
    assert exp.base(1)["accuracy"] == summary["accuracy"] and result.stat().st_mtime_ns == stamp  # reused
    assert not exp.base_dir(0).exists()  # only the seeds asked for


def test_a_saved_state_resumes_in_another_home_without_redoing_finished_work(tiny_run, tmp_path, monkeypatch, capsys):
    import tarfile

    from beam_jobs import sample_candidates, score_candidates
    from wofn import training

    cfg, exp, _, cfg_path = tiny_run
    archive = tmp_path / "state.tar.gz"
    assert cli.main(["experiment", str(cfg_path), "--home", str(exp.root.parent.parent),
                     "--save-state", str(archive)]) == 0
    names = tarfile.open(archive).getnames()
    assert not [n for n in names if n.endswith(".safetensors") or n.startswith("students/")]
    assert "base/seed=0/result.json" in names and "base/seed=0/model/manifest.json" in names
    assert any(n.startswith("candidates/") for n in names) and any(n.startswith("scores/") for n in names)

    # the other machine: one student was still training when the state was saved
    home = tmp_path / "other"
    lost = cfg.cells()[1]
    trained = []
    real_train = training.train_reward_model
    monkeypatch.setattr(training, "train_reward_model", lambda *a, **k: trained.append(a[3]) or real_train(*a, **k))
    for job in (sample_candidates, score_candidates):
        monkeypatch.setattr(job, "run", lambda *a, **k: pytest.fail("a finished step ran again"))
    moved = runner.Experiment(cfg, home)
    capsys.readouterr()
    assert cli.main(["experiment", str(cfg_path), "--home", str(home), "--restore-state", str(archive),
                     "--report-only"]) == 0
    assert f"restored {len(names) - 1} files" in capsys.readouterr().out
    moved.cell_file(lost).unlink()
    assert cli.main(["experiment", str(cfg_path), "--home", str(home)]) == 0
    assert [p.name for p in trained] == [lost.id]
    before, after = exp.results(), moved.results()
    assert after["bases"] == before["bases"] and after["pair_stats"] == before["pair_stats"]
    assert ({c["cell"]: c["accuracy"] for c in after["cells"]} == {c["cell"]: c["accuracy"] for c in before["cells"]})
    # restoring again keeps what is there
    assert cli.main(["experiment", str(cfg_path), "--home", str(home), "--restore-state", str(archive),
                     "--report-only"]) == 0
    assert f"restored 0 files into {moved.root} ({len(names) - 1} already there" in capsys.readouterr().out


def test_a_state_saved_mid_run_leaves_out_what_a_later_step_still_needs(tiny_run, tmp_path):
    import shutil

    from wofn.experiment import state

    cfg, exp, _, _ = tiny_run
    copy = runner.Experiment(cfg, tmp_path / "home")
    shutil.copytree(exp.root, copy.root)
    shutil.rmtree(copy.path("scores"))  # stopped before the teacher scored: its weights are still needed
    copy.path("sampled.json").unlink()  # ... and before sampling finished
    (copy.base_dir(1) / runner.EVAL_FILE).unlink()  # base 1 was training
    files, notes = state.members(copy)
    assert not [f for f in files if f.parts[0] in ("candidates", "students", "scores") or f.parts[:2] in (
        ("base", "seed=0"), ("base", "seed=1"))]
    assert ("cells", f"{cfg.cells()[0].id}.json") in [f.parts for f in files]
    assert any("seed=0" in n and "teacher member" in n for n in notes)
    assert any("seed=1" in n and "not evaluated" in n for n in notes)
    assert any(n.startswith("candidates/") for n in notes)


def test_restoring_a_state_names_a_wrong_or_foreign_archive(tiny_run, tmp_path):
    from wofn.experiment import state

    cfg, exp, _, _ = tiny_run
    archive = tmp_path / "state.tar.gz"
    state.save(exp, archive)
    other = runner.Experiment(parse(TINY.replace("name: tiny", "name: other")), tmp_path / "home")
    with pytest.raises(state.StateError, match="state.tar.gz: the state of experiment 'tiny', not 'other'"):
        state.restore(other, archive)
    junk = tmp_path / "junk.tar.gz"
    junk.write_text("not an archive")
    with pytest.raises(state.StateError, match="junk.tar.gz: not a wofn experiment state"):
        state.restore(other, junk)
    assert not other.root.exists()


def test_estimate_scales_the_response_length_to_the_runs_max_new_tokens():
    cfg = parse(TINY)  # the tiny profile samples 12 new tokens
    assert cfg.settings.max_new_tokens == 12
    same = {**BENCH, "sampling": {**BENCH["sampling"], "config": {"max_new_tokens": 12}}}
    assert runner.estimate(cfg, bench=same)["seconds"]["sampling"] == pytest.approx(24 * 10 / 50)
    assert "at most" not in runner.format_estimate(runner.estimate(cfg, bench=same))
    shorter = {**BENCH, "sampling": {**BENCH["sampling"], "config": {"max_new_tokens": 4}}}
    est = runner.estimate(cfg, bench=shorter)
    assert est["rates"]["tokens_per_candidate"] == pytest.approx(10 * 12 / 4)
    assert est["seconds"]["sampling"] == pytest.approx(24 * 30 / 50)
    assert "30 tokens each at most: the benchmark's length at max_new_tokens 4, x 12/4" in runner.format_estimate(est)
