"""The Dagster definitions load and name the product's assets."""

from __future__ import annotations

from dagster import AssetKey

from wofn_dagster.definitions import defs

ASSETS = {"human_preferences", "eval_preferences", "base_reward_model", "prompts", "candidates",
          "candidate_scores", "west_of_n_pairs", "filtered_pairs", "student_reward_model", "student_rounds",
          "reward_model_evaluations"}


def test_definitions_load_with_the_product_asset_keys():
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == ASSETS


def test_lineage_edges():
    graph = defs.resolve_asset_graph()

    def parents(name):
        return {p.to_user_string() for p in graph.get(AssetKey(name)).parent_keys}

    assert parents("candidates") == {"prompts"}
    assert parents("candidate_scores") == {"candidates", "base_reward_model"}
    assert parents("west_of_n_pairs") == {"candidates", "candidate_scores"}
    assert parents("filtered_pairs") == {"west_of_n_pairs"}
    assert parents("student_reward_model") == {"human_preferences", "filtered_pairs", "eval_preferences",
                                               "base_reward_model"}
    assert parents("student_rounds") == {"student_reward_model", "candidates", "human_preferences", "eval_preferences"}


def test_resources_have_embedded_defaults():
    resources = defs.resources
    assert resources["beam_runner"].runner == "DirectRunner"
    assert resources["settings"].n >= 2
