"""One settings model (wofn/settings.py): profiles are instances of it, the Dagster resources and
the Beam jobs' flags come from it, bad values name the setting, and docs/settings.md is generated
from it."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from beam_jobs import sample_candidates, score_candidates
from wofn import cli, profiles, settings
from wofn.paths import REPO_ROOT
from wofn.settings import Settings, SettingsError
from wofn_dagster import resources


def test_docs_settings_md_is_generated_from_the_model():
    expected = settings.markdown(profiles.PROFILES)
    assert (REPO_ROOT / "docs" / "settings.md").read_text(encoding="utf-8") == expected, (
        "docs/settings.md is stale: run `wofn settings --markdown > docs/settings.md`")
    for name in settings.names():
        assert f"| `{name}` |" in expected


def test_every_setting_has_a_stage_and_help():
    for f in dataclasses.fields(Settings):
        assert f.metadata["group"] in settings.GROUPS, f.name
        assert len(f.metadata["help"]) > 10, f.name


def test_each_setting_is_one_field_of_one_dagster_resource_with_its_help():
    by_resource = {"settings": resources.WofnSettings, "policy": resources.PolicyResource,
                   "reward_models": resources.RewardModelResource}
    seen = []
    for resource, cls in by_resource.items():
        owned = settings.owned_by(resource)
        for name in settings.names():
            field = owned[name][0] if name in owned else name
            if name in owned or (resource == "settings" and not any(name in settings.owned_by(r)
                                                                     for r in ("policy", "reward_models"))):
                assert settings.setting_help(name) in cls.model_fields[field].description
                seen.append(name)
    assert sorted(seen) == sorted(settings.names())
    assert set(resources.WofnSettings.model_fields) - set(settings.names()) == {"profile"}
    assert resources.PolicyResource.model_fields["model"].description.endswith("($WOFN_POLICY)")


def test_profiles_are_instances_and_tiny_changes_only_what_it_names():
    assert profiles.DEFAULT == Settings()
    changed = {k for k, v in profiles.TINY.as_dict().items() if v != profiles.DEFAULT.as_dict()[k]}
    assert changed == {"max_human_pairs", "max_eval_pairs", "max_prompts", "policy", "policy_dtype", "score_dtype",
                       "n", "max_new_tokens", "rm_backbone", "rm_max_length", "rm_epochs", "rm_learning_rate",
                       "rm_bf16", "confidence_quantile", "logprob_quantile", "rounds"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        profiles.DEFAULT.n = 3


@pytest.mark.parametrize("changes, message", [
    ({"n": 1}, r"n must be an integer >= 2 \(a pair needs two candidates\), got 1"),
    ({"n": 4.0}, r"n must be an integer, got 4.0"),
    ({"rm_epochs": "2"}, r"rm_epochs must be a number, got '2'"),
    ({"rm_bf16": 1}, r"rm_bf16 must be true or false, got 1"),
    ({"max_prompts": 0}, r"max_prompts must be an integer >= 1, got 0"),
    ({"top_p": 0}, r"top_p must be a number in \(0, 1\], got 0.0"),
    ({"rm_warmup_ratio": 1}, r"rm_warmup_ratio must be a number in \[0, 1\), got 1.0"),
    ({"policy_dtype": "int8"}, r"policy_dtype must be one of auto, float32, bfloat16, float16; got 'int8'"),
    ({"prompt_sources": "unlabeled"}, r"prompt_sources must be a list of strings"),
    ({"prompt_sources": ["web"]}, r"prompt_sources must be a non-empty list of .*'web'"),
    ({"strategy": "best_of_n"}, r"strategy must be one of"),
    ({"max_promts": 5}, r"unknown setting\(s\) \['max_promts'\]"),
    ({"teacher": "pairwise"}, r"length_control 'band' needs a reward per candidate, but the teacher is pairwise"),
    ({"teacher": "pairwise", "length_control": "none", "strategy": "random_pair"}, r"pairwise"),
    ({"teacher": "pairwise", "length_control": "none", "teacher_members": 3}, r"teacher_members: 3 needs a pointwise"),
    ({"confidence_measure": "agreement"}, r"confidence_measure 'agreement' needs a teacher ensemble"),
])
def test_bad_settings_name_the_setting(changes, message):
    with pytest.raises(SettingsError, match=message):
        profiles.DEFAULT.replace(**changes)


def test_values_are_coerced_to_their_types():
    s = profiles.DEFAULT.replace(rm_epochs=3, prompt_sources=["unlabeled", "human_pairs"], min_margin=1)
    assert s.rm_epochs == 3.0 and isinstance(s.rm_epochs, float) and isinstance(s.min_margin, float)
    assert s.prompt_sources == ("unlabeled", "human_pairs")
    assert s.as_dict()["prompt_sources"] == ["unlabeled", "human_pairs"]
    assert settings.from_mapping({"n": 16}).n == 16
    assert profiles.DEFAULT.replace(confidence_measure="agreement", teacher_members=3).teacher_members == 3


def test_a_pairwise_teacher_override_turns_the_length_control_off():
    assert settings.with_overrides(profiles.DEFAULT, {"teacher": "pairwise"}).length_control == "none"
    with pytest.raises(SettingsError, match="needs a reward per candidate"):
        settings.with_overrides(profiles.DEFAULT, {"teacher": "pairwise", "length_control": "residual"})
    res = resources.wofn_resources(profile="tiny", teacher="pairwise")
    assert res["settings"].length_control == "none" and res["reward_models"].teacher == "pairwise"


def test_resources_check_each_field_as_its_setting():
    with pytest.raises(ValidationError,
                       match=r"policy_dtype must be one of auto, float32, bfloat16, float16; got 'int8'"):
        resources.PolicyResource(model="x", dtype="int8", engine="torch")
    fields = resources.WofnSettings.from_profile("tiny").model_dump()
    with pytest.raises(ValidationError, match=r"n must be an integer >= 2"):
        resources.WofnSettings(**{**fields, "n": 1})


def test_run_settings_check_the_rules_across_resources():
    res = resources.wofn_resources(profile="tiny")
    pairwise = resources.RewardModelResource(**{**res["reward_models"].model_dump(), "teacher": "pairwise"})
    with pytest.raises(SettingsError, match="needs a reward per candidate"):  # the settings keep the band
        resources.run_settings(res["settings"], reward_models=pairwise)


def test_a_settings_resource_of_your_own_profile_name_runs():
    fields = {**resources.WofnSettings.from_profile("tiny").model_dump(), "profile": "mine"}
    run = resources.run_settings(resources.WofnSettings(**fields))
    assert run.n == profiles.TINY.n and run.policy == profiles.DEFAULT.policy  # not given: the default's


def test_beam_job_flags_default_to_the_settings():
    known, _ = sample_candidates.parse_args(["--prompts", "p", "--output", "o", "--policy", "x", "--n", "4",
                                             "--max-new-tokens", "8"])
    d = profiles.DEFAULT
    assert (known.temperature, known.top_p, known.seed, known.engine, known.batch_size, known.device) == (
        d.temperature, d.top_p, d.seed, d.sampling_engine, d.sample_batch_size, d.device)
    known, _ = score_candidates.parse_args(["--candidates", "c", "--output", "o", "--reward-model", "rm"])
    assert known.batch_size == d.score_batch_size


def test_wofn_settings_prints_a_profile(capsys):
    import json

    assert cli.main(["settings", "--profile", "tiny"]) == 0
    assert json.loads(capsys.readouterr().out) == profiles.TINY.as_dict()
    assert cli.main(["settings", "--markdown"]) == 0
    assert capsys.readouterr().out == settings.markdown(profiles.PROFILES)
