"""The optional vLLM engine: a clear install hint where vllm is missing, and its request plan."""

from __future__ import annotations

import importlib.util

import pytest

from beam_jobs import sample_candidates
from wofn import generation, vllm_sampling

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
def test_vllm_engine_without_vllm_fails_before_any_work_with_the_install_hint(tmp_path, prompts_file):
    out = tmp_path / "candidates"
    with pytest.raises(ImportError, match="pip install vllm"):
        sample_candidates.run(["--prompts", str(prompts_file), "--output", str(out), "--policy", "tiny-llama",
                               "--n", "2", "--max-new-tokens", "4", "--engine", "vllm"], save_main_session=False)
    assert not out.exists()


def test_vllm_plan_is_one_request_per_candidate_with_the_torch_engines_seeds_and_prompt_ids(tiny_policy):
    prompts = [("p0", "\n\nHuman: hi\n\nAssistant:"), ("p1", "\n\nHuman: " + "long " * 50 + "\n\nAssistant:")]
    params = generation.SamplingParams(n=3, max_new_tokens=4, seed=11, max_prompt_tokens=32)
    requests = vllm_sampling.plan(tiny_policy.tokenizer, prompts, params)
    torch_rows = generation.sample(tiny_policy, prompts, params, return_token_ids=True)
    assert [(prompts[r["prompt"]][0], r["candidate_idx"]) for r in requests] == \
        [(row["prompt_id"], row["candidate_idx"]) for row in torch_rows]
    assert [r["seed"] for r in requests] == [row["seed"] for row in torch_rows]
    assert [r["prompt_token_ids"] for r in requests] == [row["prompt_token_ids"] for row in torch_rows]
    assert all(len(r["prompt_token_ids"]) <= 32 for r in requests)
