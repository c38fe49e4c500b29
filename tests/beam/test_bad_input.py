"""A corpus of bad input files: each is answered with a message naming the file (row, column), or
with its errors-table row; a failed read leaves the tables written before unchanged; bad rows in
the Beam jobs' input and non-finite rewards become dead letters."""

from __future__ import annotations

import json
import math
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance, materialize

from beam_jobs import sample_candidates, score_candidates
from wofn import data, models, schemas
from wofn.paths import content_hash
from wofn_dagster import partitions
from wofn_dagster.definitions import defs
from wofn_dagster.resources import WofnHomeResource, WofnSettings
from wofn_dagster.selections import select

GOOD = "\n\nHuman: how do I bake bread?\n\nAssistant:"


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _invalid_utf8_parquet(path):
    offsets = pa.array([0, 2], pa.int32())
    invalid = pa.StringArray.from_buffers(1, offsets.buffers()[1], pa.py_buffer(b"\xff\xfe"))
    pq.write_table(pa.table({"prompt": invalid}), path)
    return path


# (name, how to make the file in tmp_path, the message expected: it names the file and the problem)
FILE_LEVEL = [
    ("missing_column.parquet", lambda p: pq.write_table(pa.table({"text": [GOOD]}), p),
     r"missing_column\.parquet: missing column\(s\) \['prompt'\]"),
    ("wrong_type.parquet", lambda p: pq.write_table(pa.table({"prompt": [1, 2]}), p),
     r"wrong_type\.parquet: column 'prompt' must be text, found int64"),
    ("zero_bytes.parquet", lambda p: p.write_bytes(b""), r"zero_bytes\.parquet: not a readable Parquet file"),
    ("no_rows.parquet", lambda p: pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), p),
     r"no_rows\.parquet: no rows"),
    ("empty.jsonl", lambda p: p.write_text(""), r"empty\.jsonl: no rows"),
    ("not_json.jsonl", lambda p: p.write_text(json.dumps({"prompt": GOOD}) + "\n{prompt: oops\n"),
     r"not_json\.jsonl: line 2 is not JSON"),
    ("not_object.jsonl", lambda p: p.write_text('["a list"]\n'),
     r"not_object\.jsonl: line 1 is JSON but not an object"),
    ("bad_utf8.jsonl", lambda p: p.write_bytes(json.dumps({"prompt": GOOD}).encode() + b"\n{\"prompt\": \"\xff\"}\n"),
     r"bad_utf8\.jsonl: line 2 is not valid UTF-8"),
    ("bad_utf8.parquet", _invalid_utf8_parquet, r"bad_utf8\.parquet: column 'prompt' holds invalid data"),
    ("null_prompt.jsonl", lambda p: _jsonl(p, [{"prompt": GOOD}, {"prompt": None}]),
     r"null_prompt\.jsonl: column 'prompt' is empty \(null\) at row 1"),
    ("wrong_suffix.csv", lambda p: p.write_text("prompt\nhi\n"), r"wrong_suffix\.csv: expected a \.parquet or \.jsonl"),
]


@pytest.mark.parametrize("name, make, message", FILE_LEVEL, ids=[case[0] for case in FILE_LEVEL])
def test_file_level_problems_stop_with_a_message_naming_the_file(tmp_path, name, make, message):
    path = tmp_path / name
    make(path)
    with pytest.raises(data.InputError, match=message):
        data.read_prompts(path)


def test_folder_with_mixed_schemas_names_the_files(tmp_path):
    folder = tmp_path / "inbox"
    folder.mkdir()
    pq.write_table(pa.table({"prompt": [GOOD], "source": ["a"]}), folder / "a.parquet")
    pq.write_table(pa.table({"prompt": [GOOD + " x"], "source": [7]}), folder / "b.parquet")
    with pytest.raises(data.InputError, match=r"mixes files of different schemas.*a\.parquet.*b\.parquet"):
        data.read_prompts(folder)
    pq.write_table(pa.table({"prompt": [3]}), folder / "b.parquet")  # the required column's type differs
    with pytest.raises(data.InputError, match=r"b\.parquet: column 'prompt' must be text"):
        data.read_prompts(folder)


def test_row_level_problems_go_to_the_errors_table(tmp_path):
    path = _jsonl(tmp_path / "prompts.jsonl", [
        {"prompt": GOOD}, {"prompt": "   "}, {"prompt": "bad\x00byte"}, {"prompt": "x" * 1_000_000},
        {"prompt": GOOD.replace("bread", "cake")}, {"prompt": GOOD + "  "},  # the same prompt, normalized
    ])
    table, errors = data.read_prompts(path)
    assert table.num_rows == 2 and errors.schema.equals(schemas.ERRORS)
    got = [(e["row"], e["reason"], e["source"]) for e in errors.to_pylist()]
    assert got == [(1, "empty_prompt", "prompts.jsonl"), (2, "nul_bytes", "prompts.jsonl"),
                   (3, "prompt_too_long", "prompts.jsonl"), (5, "duplicate_prompt", "prompts.jsonl")]
    assert "same prompt as prompts.jsonl row 0" in errors.to_pylist()[3]["detail"]
    assert "1,000,000 characters" in errors.to_pylist()[2]["detail"]


def test_pairs_are_curated_bad_rows_stop_the_read(tmp_path):
    ok = {"prompt": GOOD, "chosen": "Mix flour.", "rejected": "No."}
    with pytest.raises(data.InputError, match=r"dup\.jsonl: row 1: pair id 'a' repeats .*row 0"):
        data.load_preferences(_jsonl(tmp_path / "dup.jsonl", [{**ok, "id": "a"}, {**ok, "id": "a"}]))
    with pytest.raises(data.InputError, match=r"nul\.jsonl: row 0: column 'chosen' holds a NUL byte"):
        data.load_preferences(_jsonl(tmp_path / "nul.jsonl", [{**ok, "chosen": "a\x00b"}]))
    assert data.load_preferences(_jsonl(tmp_path / "silent.jsonl", [{**ok, "chosen": " "}])).num_rows == 1


def test_a_bad_prompts_file_leaves_the_published_tables_unchanged(tmp_path):
    (tmp_path / "good").mkdir()
    good = _jsonl(tmp_path / "good" / "batch1.jsonl", [{"prompt": GOOD}, {"prompt": GOOD + " please"}, {"prompt": ""}])
    home = tmp_path / "home"
    instance = DagsterInstance.ephemeral()
    partitions.register(instance, ["batch1"])

    def run(prompts_file):
        settings = WofnSettings.from_profile("tiny", unlabeled_prompts=str(prompts_file))
        return materialize(list(defs.assets), selection=select("prompts"), partition_key="batch1",
                           instance=instance, resources={**defs.resources, "settings": settings,
                                                         "home": WofnHomeResource(root=str(home))},
                           raise_on_error=False)

    first = run(good)
    assert first.success
    metadata = first.asset_materializations_for_node("prompts")[0].metadata
    assert metadata["prompt_errors"].value == 1 and metadata["prompt_errors_by_reason"].value == {"empty_prompt": 1}
    before = {name: content_hash(home / "tables" / name) for name in ("prompts", "prompt_errors")}

    (tmp_path / "bad").mkdir()
    bad = tmp_path / "bad" / "batch1.jsonl"  # the same batch, now a broken file
    bad.write_text(json.dumps({"prompt": GOOD}) + "\nnot json\n")
    second = run(bad)
    assert not second.success
    error = second.get_step_failure_events()[0].event_specific_data.error
    assert "batch1.jsonl: line 2 is not JSON" in error.message + (error.cause.message if error.cause else "")
    assert {name: content_hash(home / "tables" / name) for name in before} == before


def test_sampling_job_sends_bad_rows_to_its_errors_table(tmp_path):
    rows = [{"prompt_id": "ok", "prompt": GOOD}, {"prompt_id": "ok", "prompt": GOOD},  # a repeated id
            {"prompt_id": "empty", "prompt": " "}, {"prompt_id": "nul", "prompt": "a\x00b"}]
    prompts = tmp_path / "prompts.parquet"
    pq.write_table(pa.Table.from_pylist(rows), prompts)
    out = tmp_path / "candidates"
    sample_candidates.run(["--prompts", str(prompts), "--output", str(out), "--policy", "tiny-llama", "--n", "2",
                           "--max-new-tokens", "3", "--max-error-fraction", "1.0"], save_main_session=False)
    candidates = pq.read_table(out).to_pylist()
    errors = sorted((e["prompt_id"], e["reason"]) for e in pq.read_table(f"{out}_errors").to_pylist())
    assert sorted((c["prompt_id"], c["candidate_idx"]) for c in candidates) == [("ok", 0), ("ok", 1)]
    assert errors == [("empty", "empty_prompt"), ("nul", "nul_bytes"), ("ok", "duplicate_prompt")]
    with pytest.raises(RuntimeError, match="3 of 4 prompts or candidates failed"):
        sample_candidates.run(["--prompts", str(prompts), "--output", str(tmp_path / "again"), "--policy",
                               "tiny-llama", "--n", "2", "--max-new-tokens", "3"], save_main_session=False)


def test_non_finite_rewards_become_score_errors(tmp_path):
    broken = tmp_path / "nan-rm"
    rm = models.load_reward_model(models.TINY_BERT)
    head = rm.model.classifier
    head.bias.data.fill_(math.nan)
    rm.model.save_pretrained(broken)
    rm.tokenizer.save_pretrained(broken)
    candidates = tmp_path / "candidates.parquet"
    pq.write_table(_candidates(), candidates)
    out = tmp_path / "scores"
    score_candidates.run(["--candidates", str(candidates), "--output", str(out), "--reward-model", str(broken),
                          "--max-length", "32"], save_main_session=False)
    assert not list(out.glob("*.parquet")) or pq.read_table(out).num_rows == 0
    errors = pq.read_table(f"{out}_errors").to_pylist()
    assert sorted((e["prompt_id"], e["candidate_idx"], e["reason"]) for e in errors) == \
        [("p", 0, "non_finite_reward"), ("p", 1, "non_finite_reward")]


def _candidates() -> pa.Table:
    rows = [{"prompt_id": "p", "candidate_idx": i, "prompt": GOOD, "response": f"answer {i}", "num_tokens": 2,
             "logprob_sum": -1.0, "logprob_mean": -0.5, "finish_reason": "stop", "temperature": 0.7, "top_p": 1.0,
             "max_new_tokens": 4, "seed": i, "policy": "x", "policy_revision": "y"} for i in range(2)]
    return pa.Table.from_pylist(rows, schema=schemas.CANDIDATES)


def test_sampling_job_on_a_prompt_file_with_only_a_prompt_column_derives_the_ids(tmp_path):
    """What the README says a prompt file needs (a `prompt` column) is enough for the job run on its
    own: each prompt gets the id the `prompts` asset gives it."""
    texts = [GOOD, "\n\nHuman: what is a prime number?\n\nAssistant:", ""]
    pq.write_table(pa.table({"prompt": texts}), tmp_path / "only_prompt.parquet")
    out = tmp_path / "cands"
    stats = sample_candidates.run(["--prompts", str(tmp_path / "only_prompt.parquet"), "--output", str(out),
                                   "--policy", "tiny-llama", "--n", "2", "--max-new-tokens", "2"],
                                  save_main_session=False)
    rows = [r for f in out.glob("*.parquet") for r in pq.read_table(f).to_pylist()]
    assert stats["candidates"] == 4 and {r["prompt_id"] for r in rows} == {data.prompt_id(t) for t in texts[:2]}
    errors = [r for f in (tmp_path / "cands_errors").glob("*.parquet") for r in pq.read_table(f).to_pylist()]
    assert [(e["reason"], e["prompt_id"]) for e in errors] == [("empty_prompt", data.prompt_id(""))]


@pytest.mark.parametrize("job, flag, table, message", [
    (sample_candidates, "--prompts", {"text": [GOOD]}, "no column 'prompt'; a prompt file needs"),
    (score_candidates, "--candidates", {"prompt_id": ["a"], "prompt": [GOOD]},
     "no column 'candidate_idx', 'response'; a candidates file"),
])
def test_beam_job_input_without_its_columns_is_refused_naming_the_file(tmp_path, job, flag, table, message):
    path = tmp_path / "input.parquet"
    pq.write_table(pa.table(table), path)
    model = ["--policy", "tiny-llama", "--n", "2", "--max-new-tokens", "2"] if job is sample_candidates \
        else ["--reward-model", "tiny-bert"]
    with pytest.raises(ValueError, match=re.escape(f"{path}: {message}")):
        job.run([flag, str(path), "--output", str(tmp_path / "out"), *model], save_main_session=False)
    assert not (tmp_path / "out").exists(), "nothing is written for an input that is refused"
