"""The assets' code versions come from what their stages import (wofn_dagster.code_versions)."""

from __future__ import annotations

import pytest

from wofn.paths import REPO_ROOT, SQL_DIR
from wofn_dagster import code_versions


def _names(paths) -> set[str]:
    return {p.relative_to(REPO_ROOT).as_posix() for p in paths}


def test_a_stage_covers_what_it_imports_transitively():
    sampling = _names(code_versions.sources("beam_jobs.sample_candidates"))
    assert {"beam_jobs/sample_candidates.py", "beam_jobs/inference.py", "beam_jobs/io.py", "wofn/generation.py",
            "wofn/models.py", "wofn/reward_head.py", "wofn/vllm_sampling.py"} <= sampling
    assert not any(name.startswith("sql/") for name in sampling), "sampling runs no SQL"
    # evaluation loads models and scores with them: the hand-kept list named only wofn/evaluation.py
    assert ({"wofn/models.py", "wofn/scoring.py", "wofn/rm_format.py"}
            <= _names(code_versions.sources("wofn.evaluation")))


def test_the_pair_stage_covers_the_sql_it_runs_and_the_sql_that_reads():
    covered = _names(code_versions.sources("wofn.pairs"))
    table_sql = {p.relative_to(REPO_ROOT).as_posix() for p in SQL_DIR.rglob("*.sql")
                 if p.parent.name not in ("analysis", "checks")}
    assert table_sql <= covered  # strategies/<name> from an f-string prefix, pair_filter_flags via a header
    assert not any("/analysis/" in name for name in covered)
    data = _names(code_versions.sources("wofn.data", "wofn.prompt_sources"))
    assert not any(name.startswith("sql/") for name in data), "naming a table is not running its SQL"


def test_versions_follow_the_files():
    base = code_versions.code_version("wofn.pairs")
    assert base == code_versions.code_version("wofn.pairs") and len(base) == 12
    assert code_versions.code_version("wofn.pairs", files=("wofn/stages.py",)) != base
    with pytest.raises(FileNotFoundError, match="no such file"):
        code_versions.code_version("wofn.pairs", files=("wofn/nope.py",))
