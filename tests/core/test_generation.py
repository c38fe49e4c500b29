"""Sampling: shapes, seeds, and log-probabilities that match a teacher-forced forward pass."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from wofn import generation


def _prompts():
    return [("a", "\n\nHuman: Hi there\n\nAssistant:"),
            ("b", "\n\nHuman: What is 2+2?\n\nAssistant: 4\n\nHuman: Why?\n\nAssistant:")]


def test_prompt_to_messages_parses_hh_transcripts():
    messages = generation.prompt_to_messages("\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant:")
    assert messages == [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"},
                        {"role": "user", "content": "C"}]
    assert generation.prompt_to_messages("plain text") == [{"role": "user", "content": "plain text"}]


def test_sample_rows_and_seeds(tiny_policy):
    params = generation.SamplingParams(n=3, max_new_tokens=6, seed=11)
    rows = generation.sample(tiny_policy, _prompts(), params)
    assert [(r["prompt_id"], r["candidate_idx"]) for r in rows] == [(p, i) for p in "ab" for i in range(3)]
    assert rows == generation.sample(tiny_policy, _prompts(), params), "same seed, same candidates"
    other = generation.sample(tiny_policy, _prompts(), generation.SamplingParams(n=3, max_new_tokens=6, seed=12))
    assert [r["response"] for r in rows] != [r["response"] for r in other]
    assert len({r["seed"] for r in rows}) == 6
    for r in rows:
        assert r["finish_reason"] in ("stop", "length")
        assert (r["finish_reason"] == "length") == (r["num_tokens"] == 6 and r["finish_reason"] != "stop")
        assert math.isclose(r["logprob_mean"], r["logprob_sum"] / r["num_tokens"])


def test_logprobs_equal_teacher_forced_scores(tiny_policy):
    """The log-prob recorded while sampling (batched, cached) equals a fresh full forward pass."""
    params = generation.SamplingParams(n=2, max_new_tokens=5, seed=5)
    rows = generation.sample(tiny_policy, _prompts(), params, return_token_ids=True)
    for row in rows:
        assert row["logprob_sum"] == pytest.approx(_teacher_forced_logprob(tiny_policy, row), abs=1e-3)
        assert row["num_tokens"] == len(row["token_ids"])


def _teacher_forced_logprob(policy, row: dict) -> float:
    """The row's tokens scored by one full forward pass over prompt + response."""
    ids = row["prompt_token_ids"] + row["token_ids"]
    with torch.no_grad():
        logits = policy.model(torch.tensor([ids])).logits[0].float()
    start = len(row["prompt_token_ids"])
    steps = torch.log_softmax(logits[start - 1 : len(ids) - 1], -1)
    return steps.gather(-1, torch.tensor(row["token_ids"])[:, None]).sum().item()


def test_sampling_params_are_validated():
    with pytest.raises(ValueError, match="temperature"):
        generation.SamplingParams(temperature=0)
    with pytest.raises(ValueError, match="n must be"):
        generation.SamplingParams(n=0)


def test_inverse_cdf_sampling_follows_the_distribution_and_skips_zero_mass():
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.8]] * 4000)
    generators = [torch.Generator().manual_seed(i) for i in range(4000)]
    picked = generation._inverse_cdf_sample(probs, generators)
    counts = torch.bincount(picked, minlength=4).tolist()
    assert counts[0] == 0 and counts[2] == 0
    assert abs(counts[3] / 4000 - 0.8) < 0.03
    again = generation._inverse_cdf_sample(probs[:3], [torch.Generator().manual_seed(i) for i in range(3)])
    assert again.tolist() == picked[:3].tolist(), "each row's draw depends only on its own generator"


def _many_prompts(count: int) -> list[tuple[str, str]]:
    words = ["bread", "taxes", "rain", "python", "music", "a car", "my garden", "chess", "tea", "maps"]
    return [(f"p{k}", "\n\nHuman: " + " ".join(words[: 1 + k % len(words)]) + f" {k}?\n\nAssistant:")
            for k in range(count)]


@pytest.fixture()
def frequent_eos(monkeypatch):
    """Every 5th token ends a row, so rows end at scattered steps and slots are handed on mid-batch."""
    real = generation._eos_ids
    monkeypatch.setattr(generation, "_eos_ids",
                        lambda model, tokenizer: real(model, tokenizer) | set(range(0, 49152, 5)))


@pytest.fixture(scope="module")
def fp64_policy(tiny_policy):
    """The tiny policy in float64. In float32 its nearly flat distributions over 49k tokens put
    near-ties everywhere, and the ~1e-6 differences a batch's shape makes in the logits flip draws
    between neighbouring tokens; float64 leaves the engines' own differences (if any) to show."""
    wide = copy.deepcopy(tiny_policy)
    wide.model.to(torch.float64)
    return wide


def test_rows_do_not_depend_on_the_slot_count_or_the_engine(fp64_policy, frequent_eos):
    """Continuous batching: each (prompt, sample) gets the same tokens with 4 slots (rows handed on one
    by one, prompt groups added as stragglers pile up), 64 slots, and the static engine."""
    prompts = _many_prompts(11)
    params = generation.SamplingParams(n=3, max_new_tokens=12, seed=7)
    few = generation.sample(fp64_policy, prompts, params, slots=4, return_token_ids=True)
    many = generation.sample(fp64_policy, prompts, params, slots=64, return_token_ids=True)
    static = generation.sample(fp64_policy, prompts, params, slots=6, batching="static", return_token_ids=True)
    assert [(r["prompt_id"], r["candidate_idx"]) for r in few] == [(p, i) for p, _ in prompts for i in range(3)]
    lengths = {r["num_tokens"] for r in few}
    assert len(lengths) > 3 and {r["finish_reason"] for r in few} == {"stop", "length"}, "rows end at many steps"
    for a, b, c in zip(few, many, static):
        assert a["token_ids"] == b["token_ids"] == c["token_ids"]
        assert a["logprob_sum"] == pytest.approx(b["logprob_sum"], abs=1e-4)
        assert a["logprob_sum"] == pytest.approx(c["logprob_sum"], abs=1e-4)
        assert {k: v for k, v in a.items() if k != "logprob_sum" and k != "logprob_mean"} == \
            {k: v for k, v in c.items() if k != "logprob_sum" and k != "logprob_mean"}


def test_continuous_logprobs_equal_teacher_forced_scores(tiny_policy, frequent_eos):
    """Rows admitted into slots freed mid-batch read their own prompt and tokens only."""
    rows = generation.sample(tiny_policy, _many_prompts(5), generation.SamplingParams(n=2, max_new_tokens=9, seed=3),
                             slots=3, return_token_ids=True)
    for row in rows:
        assert row["logprob_sum"] == pytest.approx(_teacher_forced_logprob(tiny_policy, row), abs=1e-3)


def test_progress_reports_each_prompt_once_with_its_tokens(tiny_policy, frequent_eos):
    for batching in ("continuous", "static"):
        calls = []
        rows = generation.sample(tiny_policy, _many_prompts(7), generation.SamplingParams(n=2, max_new_tokens=6),
                                 slots=4, progress=lambda prompts, tokens: calls.append((prompts, tokens)),
                                 batching=batching)
        assert sum(p for p, _ in calls) == 7, batching
        assert sum(t for _, t in calls) == sum(r["num_tokens"] for r in rows), batching


def test_models_the_slot_engine_cannot_decode_fall_back_to_static_batches(tiny_policy, monkeypatch):
    from types import SimpleNamespace

    from transformers import Gemma2Config, LlamaConfig, MistralConfig, Qwen2Config

    def model(config, attention="sdpa"):
        config._attn_implementation = attention
        return SimpleNamespace(config=config)

    assert generation.slot_engine_supported(tiny_policy.model)
    assert generation.slot_engine_supported(model(LlamaConfig(num_hidden_layers=2)))
    assert generation.slot_engine_supported(model(LlamaConfig(num_hidden_layers=2), "eager"))
    assert generation.slot_engine_supported(model(Qwen2Config(num_hidden_layers=2, use_sliding_window=False)))
    assert not generation.slot_engine_supported(model(LlamaConfig(num_hidden_layers=2), "flash_attention_2"))
    assert not generation.slot_engine_supported(model(MistralConfig(num_hidden_layers=2, sliding_window=4096)))
    assert not generation.slot_engine_supported(model(Gemma2Config(num_hidden_layers=2)))
    monkeypatch.setattr(generation, "slot_engine_supported", lambda model: False)
    monkeypatch.setattr(generation, "_decode_in_slots", lambda *a, **k: pytest.fail("the slot engine ran"))
    rows = generation.sample(tiny_policy, _prompts(), generation.SamplingParams(n=2, max_new_tokens=4))
    assert len(rows) == 4
    with pytest.raises(ValueError, match="batching"):
        generation.sample(tiny_policy, _prompts(), generation.SamplingParams(n=2), batching="paged")


def test_a_model_whose_attention_bypasses_the_interface_is_refused_or_falls_back(tiny_policy, monkeypatch):
    """The slot engine checks on its first step that every layer attended through it."""
    monkeypatch.setattr(generation._Slots, "attend", lambda self, module, q, k, v, scaling: (
        torch.zeros(q.shape[0], 1, q.shape[1], q.shape[-1], dtype=q.dtype)))  # counts no call
    params = generation.SamplingParams(n=2, max_new_tokens=5, seed=1)
    with pytest.raises(generation._SlotEngineUnsupported, match="attention interface"):
        generation.sample(tiny_policy, _prompts(), params, batching="continuous")
    assert generation.sample(tiny_policy, _prompts(), params) == generation.sample(
        tiny_policy, _prompts(), params, batching="static")


def test_prefill_batches_group_prompts_of_similar_length():
    lengths = [392, 37, 38, 361, 40, 43, 168, 351, 46, 89, 194, 74]
    batches = generation.prefill_batches(lengths)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        real = sum(lengths[i] for i in batch)
        assert max(lengths[i] for i in batch) * len(batch) <= generation.PREFILL_PADDING * real
    assert len(batches) < len(lengths), "prompts of like length share a batch"
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    assert padded < 0.5 * max(lengths) * len(lengths), "one batch would pad every prompt to the longest"
    assert generation.prefill_batches([5, 5, 5]) == [[0, 1, 2]]


def test_a_free_slot_never_takes_the_group_row_of_a_busy_one():
    """A free slot keeps the (group, member) of the row it last decoded; once that group holds a new
    prompt, a busy slot may decode the same member: the busy slot's query must own the row."""
    kv = [(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))]
    state = generation._Slots(kv, slots=3, groups=2, n=2, prompt_columns=3, new_columns=4)
    state.group[:] = torch.tensor([1, 0, 1])
    state.member[:] = torch.tensor([0, 1, 0])  # slots 0 (busy) and 2 (free, after it) both say group 1, member 0
    state.prompt_mask[:, :2] = True
    state.prepare(2, 1, torch.tensor([True, True, False]))
    row_of = state.to_group.view(2, 2, 2)  # [group, kv head, member] -> slot * kv_heads + head
    assert row_of[1, :, 0].tolist() == [0 * 2 + 0, 0 * 2 + 1]
    assert row_of[0, :, 1].tolist() == [1 * 2 + 0, 1 * 2 + 1]
    assert row_of[0, :, 0].tolist() == [3 * 2, 3 * 2], "members no slot decodes read the zero row"


def test_the_draw_does_not_depend_on_how_many_rows_go_at_once(tiny_policy, monkeypatch):
    params = generation.SamplingParams(n=3, max_new_tokens=7, seed=2)
    monkeypatch.setattr(generation, "DRAW_ROWS", 2)
    few = generation.sample(tiny_policy, _many_prompts(3), params, slots=5)
    monkeypatch.setattr(generation, "DRAW_ROWS", 1000)
    assert generation.sample(tiny_policy, _many_prompts(3), params, slots=5) == few


def test_a_later_call_reuses_the_slot_buffers_and_gets_the_rows_of_fresh_ones(fp64_policy, frequent_eos):
    """The slot engine keeps its key and value buffers with the model between calls; a later call,
    here with fewer and other prompts, zeroes and slices them: NaN left in them changes nothing."""
    params = generation.SamplingParams(n=3, max_new_tokens=10, seed=5)
    model = fp64_policy.model
    generation._SPARE.pop(model, None)
    generation.sample(fp64_policy, _many_prompts(9), params, slots=8)
    spare = generation._SPARE[model]
    assert spare, "the first call leaves its buffers with the model"
    with torch.inference_mode():  # the engine's buffers are inference tensors
        for tensor in spare.values():
            tensor.fill_(float("nan"))
    pointers = {key: t.data_ptr() for key, t in spare.items()}
    later = _many_prompts(4)[1:]
    reused = generation.sample(fp64_policy, later, params, slots=6, return_token_ids=True)
    assert {key: t.data_ptr() for key, t in generation._SPARE[model].items()} == pointers, "the same memory"
    generation._SPARE.pop(model)
    fresh = generation.sample(fp64_policy, later, params, slots=6, return_token_ids=True)
    assert [r["token_ids"] for r in reused] == [r["token_ids"] for r in fresh]
    assert [r["logprob_sum"] for r in reused] == pytest.approx([r["logprob_sum"] for r in fresh], abs=1e-9)
