"""The benchmark's synthetic tables are real wofn tables: pair selection reads them."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from bench import run
from wofn import schemas


def test_synthetic_tables_conform_to_the_schemas_added_columns_included(tmp_path):
    candidates, scores = run.write_synthetic_tables(tmp_path, prompts=5)
    for folder, schema in ((candidates, schemas.CANDIDATES), (scores, schemas.CANDIDATE_SCORES)):
        table = pq.read_table(next(folder.glob("*.parquet")))
        assert table.num_rows == 5 * run.N and table.schema.equals(schema, check_metadata=False)


def test_sampling_compares_ours_with_the_baseline_in_the_same_dtype_and_skips_emulated_bf16(monkeypatch):
    from wofn import models

    monkeypatch.setattr(models, "native_bf16", lambda device: False)
    sizes = {"prompts": 2, "sampling_n": 2, "max_new_tokens": 4}
    result = run.bench_sampling(sizes, {"float32": 100.0, "bfloat16": 400.0})
    assert result["config"]["dtypes"] == ["float32"] and "bfloat16" in result["config"]["dtypes_skipped"]
    assert (result["config"]["n"], result["config"]["max_new_tokens"]) == (2, 4)
    assert set(result["ours"]) == set(result["static"]) == set(result["baseline"]) == set(result["speedup"]) == {
        "float32"}
    ours, static, baseline = result["ours"]["float32"], result["static"]["float32"], result["baseline"]["float32"]
    assert ours["candidates"] == static["candidates"] == baseline["candidates"] == 2 * 2
    assert result["speedup"]["float32"] == round(baseline["seconds"] / ours["seconds"], 3)
    assert result["speedup_vs_static"]["float32"] == round(static["seconds"] / ours["seconds"], 3)
    # the share of the bf16 limit is the fp32 MFU scaled by the two peaks
    assert ours["share_of_bf16_matmul_limit"] == pytest.approx(ours["mfu"]["fraction_of_peak"] / 4, abs=1e-4)
    # the first call (a worker's first shard) is timed on its own, outside the rounds' totals
    assert ours["first_call"]["candidates"] == 2 * 2 and ours["first_call"]["seconds"] > 0
    assert 0 < ours["first_call"]["share_of_bf16_matmul_limit"] < 1


def test_training_reports_its_rates_beside_the_matmul_limit(monkeypatch):
    monkeypatch.setattr(run, "REPEATS", 1)
    result = run.bench_training({"train_pairs": 4}, {"float32": 100.0, "bfloat16": 400.0})
    limit, ours = result["matmul_limit_pairs_per_s"], result["ours"]
    assert limit["bfloat16"] == pytest.approx(4 * limit["float32"], rel=1e-3)
    for label in ("fp32", "bf16"):
        # the share of the bf16 limit is the rate over the limit in pairs/s
        assert ours[label]["share_of_bf16_matmul_limit"] == pytest.approx(
            ours[label]["pairs_per_s"] / limit["bfloat16"], rel=2e-2, abs=2e-4)  # both rounded
    assert 0 < result["config"]["tokens_per_pair"] <= 2 * result["config"]["max_length"]
