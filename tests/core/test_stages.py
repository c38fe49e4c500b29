"""The stages' parameters, defined once (wofn.stages): the Dagster resources and the experiment runner
build the same training recipe and Beam job arguments from the same profile."""

from __future__ import annotations

import pytest

from beam_jobs import sample_candidates, score_candidates
from wofn import profiles, stages
from wofn.experiment import config as xconfig
from wofn.experiment import runner
from wofn_dagster.resources import run_settings, wofn_resources


def test_run_settings_give_back_the_profile():
    resources = wofn_resources(profile="tiny")
    assert run_settings(resources["settings"], resources["policy"], resources["reward_models"]) == profiles.TINY
    changed = wofn_resources(profile="tiny", policy="some/folder", rm_backbone="other", n=6)
    run = run_settings(changed["settings"], changed["policy"], changed["reward_models"])
    assert (run.policy, run.rm_backbone, run.n) == ("some/folder", "other", 6)
    # without the other resources, their settings are the profile's
    assert run_settings(changed["settings"]).policy == profiles.TINY.policy


def test_train_config_reads_every_recipe_setting():
    s = profiles.DEFAULT.replace(rm_epochs=3.0, rm_learning_rate=2e-4, rm_warmup_ratio=0.2, rm_head="mean",
                                 rm_max_length=96, rm_batch_size=8, rm_bf16=False, rm_val_fraction=0.2, seed=5)
    config = stages.train_config(s)
    assert (config.epochs, config.learning_rate, config.warmup_ratio, config.head, config.max_length,
            config.batch_size, config.bf16, config.val_fraction, config.seed) == (3.0, 2e-4, 0.2, "mean", 96, 8,
                                                                                 False, 0.2, 5)
    assert stages.train_config(s, seed=9).seed == 9
    assert stages.train_config(s, epochs=1.0, log_every=1000).epochs == 1.0
    with pytest.raises(TypeError):
        stages.train_config(s, dropout=0.1)  # not a TrainConfig field


def test_beam_job_arguments_parse_to_the_settings():
    s = profiles.TINY.replace(torch_threads=3, allow_pickle_weights=True, sample_slots=17)
    known, beam_args = sample_candidates.parse_args(stages.sampling_argv(s, "p", "o", "e", ["--runner=DaskRunner"]))
    assert (known.prompts, known.output, known.errors, known.policy, known.dtype, known.engine, known.n,
            known.max_new_tokens, known.temperature, known.top_p, known.seed, known.batch_size, known.slots,
            known.torch_threads, known.allow_pickle) == (
        "p", "o", "e", s.policy, s.policy_dtype, s.sampling_engine, s.n, s.max_new_tokens, s.temperature, s.top_p,
        s.seed, s.sample_batch_size, 17, 3, True)
    assert beam_args == ["--runner=DaskRunner"]
    known, beam_args = score_candidates.parse_args(stages.scoring_argv(s, "c", "o", "e", "rm"))
    assert (known.candidates, known.reward_model, known.batch_size, known.dtype, known.torch_threads) == (
        "c", "rm", s.score_batch_size, s.score_dtype, 3)
    assert beam_args == ["--runner=DirectRunner"]


def test_the_assets_and_the_experiment_runner_share_the_recipe(tmp_path):
    from wofn_dagster.assets.training import _train_config

    cfg = xconfig.parse("name: x\nprofile: tiny\ngrid: {strategies: [west_of_n], n: [4], filters: [none], "
                        "seeds: [0]}\n", "x.yaml")
    experiment = runner.Experiment(cfg, tmp_path)
    resources = wofn_resources(profile="tiny")
    assert experiment.train_config(0) == _train_config(resources["settings"])
    argv = experiment.sampling_args()
    assert argv == stages.sampling_argv(run_settings(resources["settings"], resources["policy"]).replace(n=4),
                                        experiment.path("prompts"), experiment.path("candidates"),
                                        experiment.path("candidate_errors"))
