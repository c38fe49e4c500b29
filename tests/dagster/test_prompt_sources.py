"""Prompts from more sources (unlabeled, human pairs, earlier turns), deduplicated by prompt_id with an
eval leak guard; and extra pairs (e.g. UltraFeedback) added to the human training pairs."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance, materialize
from pydantic import ValidationError

from wofn import data, profiles, schemas
from wofn.paths import DATA_DIR
from wofn.prompt_sources import PROMPT_SOURCES, check_prompt_sources, earlier_turn_prefixes, gather_prompts
from wofn.settings import SettingsError
from wofn_dagster import partitions
from wofn_dagster.definitions import defs
from wofn_dagster.resources import WofnHomeResource, WofnSettings
from wofn_dagster.selections import select

ONE = "\n\nHuman: Hi there\n\nAssistant:"
TWO = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke\n\nAssistant:"
THREE = TWO + " Why did the chicken cross the road?\n\nHuman: Why?\n\nAssistant:"


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _pairs(path, prompts, id_prefix="p"):
    return _jsonl(path, [{"prompt": p, "chosen": " yes", "rejected": " no", "id": f"{id_prefix}{i}"}
                         for i, p in enumerate(prompts)])


def _by_text(table):
    return {r["prompt"]: r["source"] for r in table.to_pylist()}


def test_earlier_turn_prefixes_cut_after_each_earlier_assistant_turn():
    assert earlier_turn_prefixes(ONE) == []
    assert earlier_turn_prefixes(TWO) == ["\n\nHuman: Hi there\n\nAssistant:"]
    assert earlier_turn_prefixes(THREE) == [
        "\n\nHuman: Hi there\n\nAssistant:",
        "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke\n\nAssistant:",
    ]
    assert earlier_turn_prefixes(ONE + " ") == []  # trailing whitespace is no turn
    assert earlier_turn_prefixes("\n\nHuman: no assistant turn") == []


def test_sources_are_deduplicated_by_prompt_id_first_source_wins(tmp_path):
    unlabeled = _jsonl(tmp_path / "u.jsonl", [{"prompt": TWO, "source": "file-u"}])
    # THREE is new; TWO (with other whitespace) repeats the unlabeled prompt; ONE repeats TWO's earlier turn
    human = _pairs(tmp_path / "h.jsonl", [THREE, TWO.replace("Tell me", "Tell  me") + " ", ONE])
    table, errors, counts = gather_prompts(unlabeled, human, None, PROMPT_SOURCES)
    assert table.schema.equals(schemas.PROMPTS) and errors.num_rows == 0
    assert _by_text(table) == {TWO: "file-u", THREE: "human_pairs", ONE: "human_pairs"}
    assert table.column("prompt_id").to_pylist() == sorted(data.prompt_id(t) for t in (ONE, TWO, THREE))
    assert counts == {
        "unlabeled": {"read": 1, "kept": 1, "duplicates": 0, "eval_leaks": 0},
        "human_pairs": {"read": 3, "kept": 2, "duplicates": 1, "eval_leaks": 0},
        # TWO -> ONE; THREE -> ONE, TWO; ONE -> none: all three already kept
        "earlier_turns": {"read": 3, "kept": 0, "duplicates": 3, "eval_leaks": 0},
        "eval_leaks": 0, "kept": 3, "rows": 3,
    }


def test_earlier_turns_carry_their_origin(tmp_path):
    other = "\n\nHuman: Where is Paris?\n\nAssistant: In France.\n\nHuman: And Rome?\n\nAssistant:"
    unlabeled = _jsonl(tmp_path / "u.jsonl", [{"prompt": THREE}])
    human = _pairs(tmp_path / "h.jsonl", [other])
    table, _, counts = gather_prompts(unlabeled, human, None, ("unlabeled", "human_pairs", "earlier_turns"))
    assert _by_text(table) == {
        THREE: "u.jsonl",  # no source column: the file name, as read_prompts gives it
        other: "human_pairs",
        ONE: "earlier_turn:unlabeled",
        TWO: "earlier_turn:unlabeled",
        "\n\nHuman: Where is Paris?\n\nAssistant:": "earlier_turn:human_pairs",
    }
    assert counts["earlier_turns"] == {"read": 3, "kept": 3, "duplicates": 0, "eval_leaks": 0}
    # without human_pairs, only the unlabeled prompts are cut
    table, _, counts = gather_prompts(unlabeled, human, None, ("unlabeled", "earlier_turns"))
    assert _by_text(table) == {THREE: "u.jsonl", ONE: "earlier_turn:unlabeled", TWO: "earlier_turn:unlabeled"}
    assert set(counts) == {"unlabeled", "earlier_turns", "eval_leaks", "kept", "rows"}


def test_whitespace_variants_collapse_to_one_prompt(tmp_path):
    unlabeled = _jsonl(tmp_path / "u.jsonl", [{"prompt": ONE, "source": "s"}])
    human = _pairs(tmp_path / "h.jsonl",
                   ["\n\nHuman:  Hi   there \n\nAssistant: ", "\n\nHuman: Hi there\n\nAssistant:\n"])
    table, _, counts = gather_prompts(unlabeled, human, None, ("unlabeled", "human_pairs"))
    assert table.to_pylist() == [{"prompt_id": data.prompt_id(ONE), "prompt": ONE, "source": "s"}]
    assert counts["human_pairs"] == {"read": 2, "kept": 0, "duplicates": 2, "eval_leaks": 0}


def test_eval_prompts_are_left_out_of_every_source_and_counted(tmp_path):
    unlabeled = _jsonl(tmp_path / "u.jsonl", [{"prompt": ONE}, {"prompt": "\n\nHuman: unseen\n\nAssistant:"}])
    human = _pairs(tmp_path / "h.jsonl", [TWO, THREE])
    evaluation = _pairs(tmp_path / "e.jsonl", [ONE + " ", TWO], id_prefix="e")  # ONE also as THREE's earlier turn
    table, _, counts = gather_prompts(unlabeled, human, evaluation, PROMPT_SOURCES)
    assert _by_text(table) == {"\n\nHuman: unseen\n\nAssistant:": "u.jsonl", THREE: "human_pairs"}
    assert counts["unlabeled"] == {"read": 2, "kept": 1, "duplicates": 0, "eval_leaks": 1}
    assert counts["human_pairs"] == {"read": 2, "kept": 1, "duplicates": 0, "eval_leaks": 1}
    assert counts["earlier_turns"] == {"read": 2, "kept": 0, "duplicates": 0, "eval_leaks": 2}  # THREE -> ONE, TWO
    assert counts["eval_leaks"] == 4 and counts["kept"] == 2


def test_limit_keeps_the_first_prompts_by_prompt_id(tmp_path):
    unlabeled = _jsonl(tmp_path / "u.jsonl", [{"prompt": f"\n\nHuman: q{i}\n\nAssistant:"} for i in range(5)])
    human = _pairs(tmp_path / "h.jsonl", [THREE])
    full, _, _ = gather_prompts(unlabeled, human, None, PROMPT_SOURCES)
    limited, _, counts = gather_prompts(unlabeled, human, None, PROMPT_SOURCES, limit=3)
    assert full.num_rows == 8 and counts["kept"] == 8 and counts["rows"] == 3
    assert limited.to_pylist() == full.slice(0, 3).to_pylist()


def test_unknown_or_lone_earlier_turns_source_names_the_setting(tmp_path):
    with pytest.raises(ValueError, match=r"prompt_sources must be .*unlabeled, human_pairs, earlier_turns.*'web'"):
        check_prompt_sources(["unlabeled", "web"])
    with pytest.raises(ValueError, match="prompt_sources"):
        check_prompt_sources([])
    with pytest.raises(ValueError, match="prompt_sources: 'earlier_turns' cuts"):
        gather_prompts(tmp_path / "u.jsonl", tmp_path / "h.jsonl", None, ("earlier_turns",))
    with pytest.raises(SettingsError, match=r"prompt_sources must be .*'web'"):
        WofnSettings.from_profile("tiny", prompt_sources=["web"])
    fields = {k: v for k, v in WofnSettings.from_profile("tiny").model_dump().items()}
    with pytest.raises(ValidationError, match=r"prompt_sources must be .*'web'"):  # set in the launchpad
        WofnSettings(**{**fields, "prompt_sources": ["web"]})
    assert WofnSettings.from_profile("default").prompt_sources == ["unlabeled"]


def test_shipped_data_all_sources():
    table, errors, counts = gather_prompts(DATA_DIR / "prompts_unlabeled.parquet", DATA_DIR / "hh_train.parquet",
                                           DATA_DIR / "hh_test.parquet", PROMPT_SOURCES)
    assert counts == {
        "unlabeled": {"read": 809, "kept": 809, "duplicates": 0, "eval_leaks": 0},
        "human_pairs": {"read": 1177, "kept": 1177, "duplicates": 0, "eval_leaks": 0},
        "earlier_turns": {"read": 2610, "kept": 1601, "duplicates": 1009, "eval_leaks": 0},
        "eval_leaks": 0, "kept": 3587, "rows": 3587,
    }
    assert errors.num_rows == 0 and table.num_rows == 3587
    assert len(set(table.column("prompt_id").to_pylist())) == 3587
    # the unlabeled file already holds its earlier turns: every new prefix is from a human pair
    assert Counter(table.column("source").to_pylist()) == {
        "earlier_turn:human_pairs": 1601, "human_pairs": 1177,
        "hh-rlhf/harmless-base/test:earlier-turn-prefix": 477, "hh-rlhf/harmless-base/test:final-context": 332}
    test_ids = {data.prompt_id(p)
                for p in data.load_preferences(DATA_DIR / "hh_test.parquet").column("prompt").to_pylist()}
    assert not test_ids & set(table.column("prompt_id").to_pylist())


def test_default_setting_gives_todays_prompts_table():
    s = profiles.DEFAULT
    today = data.read_prompts(s.unlabeled_prompts, s.max_prompts)
    table, errors, counts = gather_prompts(s.unlabeled_prompts, s.human_pairs, s.eval_pairs,
                                           tuple(s.prompt_sources), s.max_prompts,
                                           max_human_pairs=s.max_human_pairs)
    assert table.equals(today[0]) and errors.equals(today[1])
    assert counts["rows"] == 256 and counts["eval_leaks"] == 0


def _materialize(tmp_path, asset, **overrides):
    instance = DagsterInstance.ephemeral()
    partitions.register(instance, ["prompts_unlabeled"])
    settings = WofnSettings.from_profile("tiny", **overrides)
    return materialize(list(defs.assets), selection=select(asset), instance=instance,
                       partition_key="prompts_unlabeled" if asset == "prompts" else None,
                       resources={**defs.resources, "settings": settings,
                                  "home": WofnHomeResource(root=str(tmp_path / "home"))})


def test_prompts_asset_reports_sources_and_eval_leaks(tmp_path):
    result = _materialize(tmp_path, "prompts", prompt_sources=list(PROMPT_SOURCES), max_prompts=None)
    metadata = result.asset_materializations_for_node("prompts")[0].metadata
    # the tiny profile trains on the first 64 human pairs: their prompts, and their earlier turns
    assert metadata["prompts_from_unlabeled"].value == 809
    assert metadata["prompts_from_human_pairs"].value == 64
    assert metadata["eval_prompts_left_out"].value == 0
    assert metadata["prompt_sources"].value["kept"] == metadata["rows"].value
    table = pq.read_table(tmp_path / "home" / "tables" / "prompts")
    assert Counter(table.column("source").to_pylist())["human_pairs"] == 64


def test_extra_human_pairs_join_the_training_pairs(tmp_path):
    settings = profiles.DEFAULT.replace(max_human_pairs=100)
    assert len(data.training_pairs(settings)) == 100
    both = data.training_pairs(settings.replace(extra_human_pairs=str(DATA_DIR / "uf_train.parquet")))
    assert len(both) == 100 + 889
    assert Counter(p["source"] for p in both) == {"hh-rlhf/harmless-base/test": 100,
                                                  "ultrafeedback_binarized(trl-lib)/train1000": 889}
    capped = data.training_pairs(settings.replace(extra_human_pairs=str(DATA_DIR / "uf_train.parquet"),
                                                  max_extra_human_pairs=10))
    assert len(capped) == 110 and capped[:100] == both[:100]
    table, counts = data.training_preferences(DATA_DIR / "hh_train.parquet", None, DATA_DIR / "uf_train.parquet", 50)
    assert table.schema.equals(schemas.PREFERENCES)
    assert counts == {"human_pairs": 1177, "held_out_pairs": 0, "extra_human_pairs": 50,
                      "extra_source": str(DATA_DIR / "uf_train.parquet")}


def test_human_holdout_pairs_train_no_model_and_their_prompts_stay_out_of_the_batch():
    settings = profiles.DEFAULT.replace(human_holdout=0.2)
    held, train = data.holdout_pairs(settings), data.training_pairs(settings)
    held_ids = set(held.column("pair_id").to_pylist())
    assert held.num_rows == 223 and len(train) == 1177 - 223  # experiments/hh_teacher_holdout.yaml's split
    assert held_ids.isdisjoint(p["pair_id"] for p in train)
    assert held.schema.equals(schemas.PREFERENCES)
    # the extra pairs are not split: the share is of the human pairs only
    extra = data.training_pairs(settings.replace(extra_human_pairs=str(DATA_DIR / "uf_train.parquet")))
    assert len(extra) == len(train) + 889
    # as prompts: the held-out pairs' prompts are guarded like the evaluation pairs', the rest kept
    table, _, counts = gather_prompts(DATA_DIR / "prompts_unlabeled.parquet", DATA_DIR / "hh_train.parquet",
                                      DATA_DIR / "hh_test.parquet", ("unlabeled", "human_pairs"), human_holdout=0.2)
    kept = set(table.column("prompt_id").to_pylist())
    assert not kept & {data.prompt_id(p) for p in held.column("prompt").to_pylist()}
    assert counts["human_pairs"] == {"read": 1177 - 223, "kept": 1177 - 223, "duplicates": 0, "eval_leaks": 0}
    # human_holdout 0 (the default): nothing held out, the pair table unchanged
    assert data.holdout_pairs(profiles.DEFAULT).num_rows == 0
    assert data.training_pairs(profiles.DEFAULT) == data.load_preferences(DATA_DIR / "hh_train.parquet").to_pylist()
    with pytest.raises(SettingsError, match=r"human_holdout must be a number in \[0, 1\), got 1"):
        profiles.DEFAULT.replace(human_holdout=1)


def test_a_bad_extra_file_names_the_file(tmp_path):
    bad = tmp_path / "extra.parquet"
    pq.write_table(pa.table({"prompt": ["x"], "chosen": ["y"]}), bad)
    with pytest.raises(data.InputError, match=r"extra\.parquet.*rejected"):
        data.training_pairs(profiles.DEFAULT.replace(extra_human_pairs=str(bad)))
    with pytest.raises(data.InputError, match=r"missing\.jsonl: no such file"):
        data.training_pairs(profiles.DEFAULT.replace(extra_human_pairs=str(tmp_path / "missing.jsonl")))
    clash = _pairs(tmp_path / "clash.jsonl", [ONE], id_prefix="hh-harmless-test-L000")  # id hh-harmless-test-L0000
    with pytest.raises(data.InputError, match=r"clash\.jsonl: pair id 'hh-harmless-test-L0000'.*hh_train\.parquet"):
        data.training_pairs(profiles.DEFAULT.replace(extra_human_pairs=str(clash)))


def test_human_preferences_asset_records_the_extra_pairs(tmp_path):
    extra = _pairs(tmp_path / "extra.jsonl", [ONE, TWO], id_prefix="x")
    result = _materialize(tmp_path, "human_preferences", extra_human_pairs=str(extra))
    metadata = result.asset_materializations_for_node("human_preferences")[0].metadata
    assert metadata["human_pairs"].value == 64 and metadata["extra_human_pairs"].value == 2
    assert metadata["extra_source_file"].value == str(extra) and metadata["rows"].value == 66
    record = json.loads(open(metadata["lineage_record"].value).read())
    assert record["facts"]["extra_source"] == str(extra) and record["facts"]["extra_human_pairs"] == 2


def test_human_preferences_asset_leaves_the_holdout_out_and_says_so(tmp_path):
    result = _materialize(tmp_path, "human_preferences", human_holdout=0.25)
    metadata = result.asset_materializations_for_node("human_preferences")[0].metadata
    held = data.holdout_pairs(profiles.TINY.replace(human_holdout=0.25))
    assert 0 < held.num_rows < 64
    assert metadata["held_out_pairs"].value == held.num_rows
    assert metadata["human_pairs"].value == metadata["rows"].value == 64 - held.num_rows
    table = pq.read_table(tmp_path / "home" / "tables" / "human_preferences")
    assert set(table.column("pair_id").to_pylist()).isdisjoint(held.column("pair_id").to_pylist())
    record = json.loads(open(metadata["lineage_record"].value).read())
    assert record["facts"]["human_holdout"] == 0.25
