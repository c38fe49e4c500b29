"""`make bench`: wofn's three hot paths, each timed beside a baseline written the way common tools do it.

    python -m bench.run [--stages mfu,sampling,scoring,pairs] [--quick] [--prompts P] [--pair-prompts K]
                        [--n N] [--max-new-tokens T]

Prints one JSON object per stage on stdout (one line each) and progress on stderr. Every figure
is measured in this run; `speedup` is ours / baseline in throughput (= baseline s / ours s for
the same work). Model load time is excluded from the timings (reported as `load_seconds`), and
every model is warmed up once before it is timed. The scoring stages time each side 3 times,
alternating ours and the baseline, and keep the fastest (other work on the machine then slows
both alike); sampling is timed once per side, since one side takes minutes.

Stages:
  mfu       this CPU's matmul peak (fp32, bf16), the denominator of the `mfu` fields below
  sampling  generation.sample (length-sorted batches of 8 prompts as the Beam job forms them) vs a
            per-prompt `model.generate(..., num_return_sequences=N)` loop in the same dtype: fp32,
            and bf16 where the CPU computes it natively; ours also as a share of the bf16 matmul limit
  scoring   scoring.score (length-sorted token-budget batches, fp32 and bf16) vs a batch-size-1
            forward loop in fp32
  scoring_decoder
            a decoder RM (SmolLM2-135M + scalar head, bf16, 512 tokens) on N=8 responses per HH
            prompt: scoring.score with the shared prompt prefix computed once, vs the same
            without sharing, vs a batch-size-1 loop
  scoring_memory
            peak RSS of the score_candidates Beam job (DirectRunner, tiny-bert) at 10k and 100k
            candidates, each in a fresh process: memory must stay flat as work grows
  training  Bradley-Terry training of the default RM (MiniLM + scalar head, 128 tokens, 16 pairs a
            step) on HH train pairs: pairs/s with bf16 autocast vs fp32 (the rate `wofn experiment`
            estimates student and base training from), beside the matmul-bound limit in pairs/s
            (6 FLOPs per parameter and trained token, at the fp32 and bf16 peaks)
  pairs     pairs.select_pairs + filter_pairs (DuckDB SQL) vs a Python dict loop over to_pylist
            rows; each side in its own spawned process, so peak RSS is measured per side
  pairs_scale
            ours alone at 10^6 and 10^7 synthetic candidates (quick: 10^5 and 10^6): seconds and
            peak RSS of each, and their ratios (time should grow ~10x, memory far less)

Sizes (see SIZES): the full run samples 32 HH prompts x N=8 x 64 new tokens, scores the 304 HH
test pairs and selects pairs from 1,000,000 synthetic candidates: about 6 minutes on a quiet
2-core CPU (with 16 prompts, ours fp32 took ~44 s, ours bf16 ~24 s and the baseline ~87 s; other
work on the machine slows single stages by up to ~2x, see `load_avg_1m`). `--quick` samples
8 prompts, scores 64 HH pairs and builds 100,000 synthetic candidates; `--prompts` and
`--pair-prompts` override either preset, `--n` and `--max-new-tokens` the sampling stage's N and
new tokens (e.g. `--stages sampling --n 4`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing
import os
import platform
import re
import resource
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

STAGES = ("mfu", "sampling", "scoring", "scoring_decoder", "scoring_memory", "training", "pairs", "pairs_scale")
SIZES = {
    # prompts: sampled prompts (N=8 each); score_pairs: HH test pairs scored (x2 sequences);
    # pair_prompts: synthetic prompts for the pairs stage (x N=8 candidates); scale_pair_prompts: the
    # pairs_scale stage's two sizes (x8: 10^6 and 10^7 candidates in full)
    "full": {"prompts": 32, "score_pairs": 304, "decoder_prompts": 16, "memory_candidates": (10_000, 100_000),
             "pair_prompts": 125_000, "train_pairs": 128, "scale_pair_prompts": (125_000, 1_250_000)},
    "quick": {"prompts": 8, "score_pairs": 64, "decoder_prompts": 4, "memory_candidates": (2_000, 20_000),
              "pair_prompts": 12_500, "train_pairs": 32, "scale_pair_prompts": (12_500, 125_000)},
}
POLICY, RM = "smollm2-135m-instruct", "minilm-l6"
N, MAX_NEW_TOKENS, TEMPERATURE, SAMPLE_BATCH = 8, 64, 0.7, 8
ROUND_PROMPTS = 32  # sampling: the sides take turns this many prompts at a time
RM_MAX_LENGTH = 256
REPEATS = 3  # scoring stages: each side timed this often, alternating, fastest kept
DECODER_RM, DECODER_RM_MAX_LENGTH = "smollm2-135m-instruct", 512
CONFIDENCE_QUANTILE, LOGPROB_QUANTILE = 0.5, 0.1  # the default profile's filters
_START = time.perf_counter()


# --- helpers ---------------------------------------------------------------------------------

def log(message: str) -> None:
    print(f"[bench {time.perf_counter() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


def timed(fn, *args, **kwargs):
    """(fn's result, seconds it took)."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def best_of(repeats: int, *sides):
    """Time each (fn, args...) side `repeats` times, alternating sides so that other work on the
    machine hits them alike; per side (the last result, its fastest seconds)."""
    results = [None] * len(sides)
    fastest = [float("inf")] * len(sides)
    for _ in range(repeats):
        for k, (fn, *args) in enumerate(sides):
            results[k], seconds = timed(fn, *args)
            fastest[k] = min(fastest[k], seconds)
    return list(zip(results, fastest))


def machine() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "platform": platform.processor() or platform.machine()}


def emit(stage: str, figures: dict, load_before: float) -> None:
    """One JSON line on stdout; the load averages show whether other work ran beside the stage."""
    record = {"stage": stage, **figures, "machine": machine(),
              "load_avg_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
              "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    print(json.dumps(record), flush=True)


def rate(count: float, seconds: float) -> float:
    return round(count / seconds, 2) if seconds > 0 else float("nan")


def side(seconds: float, **counts) -> dict:
    """Seconds, the raw counts, and each count per second."""
    return {"seconds": round(seconds, 3), **counts, **{f"{k}_per_s": rate(v, seconds) for k, v in counts.items()}}


def mfu(params: int, tokens: int, seconds: float, peak_gflops: float | None, flops_per_param_token: int = 2) -> dict:
    """Achieved GFLOP/s at ~`flops_per_param_token` * params FLOPs per token (2: a forward pass,
    6: forward and backward in training; attention ignored), and its share of peak."""
    achieved = flops_per_param_token * params * tokens / seconds / 1e9
    return {"flop_params": params, "flop_tokens": tokens, "flops_per_param_token": flops_per_param_token,
            "achieved_gflops": round(achieved, 2), "peak_gflops": peak_gflops,
            "fraction_of_peak": round(achieved / peak_gflops, 4) if peak_gflops else None}


# --- mfu: the matmul peak ----------------------------------------------------------------------

def matmul_peak_gflops(dtype, size: int = 2048, seconds: float = 2.0, device: str = "cpu") -> float:
    """GFLOP/s of a `size`^3 matmul loop run for ~`seconds` on `device`. On a GPU the loop waits for
    every 10 queued products before it reads the clock, so the time covers the work."""
    import torch

    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    cuda = torch.device(device).type == "cuda"
    chunk = 10 if cuda else 1
    out = torch.matmul(a, b)  # warm-up
    if cuda:
        torch.cuda.synchronize(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(chunk):
            torch.matmul(a, b, out=out)
        count += chunk
        if cuda:
            torch.cuda.synchronize(device)
    return round(2 * size**3 * count / (time.perf_counter() - start) / 1e9, 1)


def bench_mfu(sizes: dict) -> dict:
    import torch

    peaks = {name: matmul_peak_gflops(dtype) for name, dtype in
             (("float32", torch.float32), ("bfloat16", torch.bfloat16))}
    log(f"matmul peak GFLOP/s: {peaks}")
    return {"matmul": "2048x2048 torch.matmul loop, ~2 s per dtype, all threads", "peak_gflops": peaks}


# --- sampling --------------------------------------------------------------------------------

def sampling_prompts(count: int) -> list[tuple[str, str]]:
    from wofn import data
    from wofn.paths import DATA_DIR

    table = data.load_prompts(DATA_DIR / "prompts_unlabeled.parquet", limit=count)
    return [(row["prompt_id"], row["prompt"]) for row in table.to_pylist()]


def load_warm_policy(dtype: str, prompts):
    """The policy in `dtype`, its load seconds, after one tiny warm-up call of each sampler."""
    from wofn import generation, models

    policy, load_s = timed(models.load_policy, POLICY, dtype=dtype)
    generation.sample(policy, prompts[:1], generation.SamplingParams(n=2, max_new_tokens=4))
    return policy, load_s


def length_batches(prompts: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The batches the sampling job forms for one shard (beam_jobs.sample_candidates), without Beam."""
    from beam_jobs import sample_candidates

    rows = [{"prompt_id": prompt_id, "prompt": text} for prompt_id, text in prompts]
    return [[(r["prompt_id"], r["prompt"]) for r in batch]
            for batch in sample_candidates.length_sorted_batches(rows, SAMPLE_BATCH)]


def longest_first(prompts: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The order the sampling job hands a shard to the continuous engine (beam_jobs.sample_candidates)."""
    from beam_jobs import sample_candidates

    rows = [{"prompt_id": prompt_id, "prompt": text} for prompt_id, text in prompts]
    return [(r["prompt_id"], r["prompt"]) for r in sample_candidates.by_length(rows)[::-1]]


def padded_prefill_tokens(encoded_by_id: dict[str, list[int]], batches) -> int:
    return sum(len(batch) * max(len(encoded_by_id[pid]) for pid, _ in batch) for batch in batches)


def tokens_through_eos(generated, eos_ids: set[int]) -> int:
    """Generated tokens per sequence up to and including the first EOS (all of them if none)."""
    total = 0
    for row in generated.tolist():
        stop = next((k for k, token in enumerate(row) if token in eos_ids), None)
        total += len(row) if stop is None else stop + 1
    return total


def baseline_sampling(policy, encoded: list[list[int]], params) -> tuple[int, int]:
    """The common way: one `generate` per prompt, N rows via num_return_sequences.
    Returns (candidates, generated tokens through EOS)."""
    import torch

    from wofn import generation

    eos_ids = generation._eos_ids(policy.model, policy.tokenizer)
    device = next(policy.model.parameters()).device
    tokens = 0
    for ids in encoded:
        inputs = {"input_ids": torch.tensor([ids], device=device),
                  "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=device)}
        out = policy.model.generate(**inputs, do_sample=True, temperature=params.temperature,
                                    max_new_tokens=params.max_new_tokens, num_return_sequences=params.n)
        tokens += tokens_through_eos(out[:, len(ids):], eos_ids)
    return len(encoded) * params.n, tokens


def ours_sampling(policy, prompts, params) -> tuple[int, int]:
    """The sampling job's call for a shard: every prompt at once, longest first, decoded in the
    default number of slots (continuous batching)."""
    from wofn import generation
    from wofn.settings import Settings

    rows = generation.sample(policy, prompts, params, slots=Settings.sample_slots)
    return len(rows), sum(r["num_tokens"] for r in rows)


def static_sampling(policy, batches, params) -> tuple[int, int]:
    """The engine before continuous batching: length-sorted batches of 8 prompts, each decoded
    until its longest row ends."""
    from wofn import generation

    rows = [r for batch in batches for r in generation.sample(policy, batch, params, batching="static")]
    return len(rows), sum(r["num_tokens"] for r in rows)


def prefill_share_estimate(policy, encoded: list[list[int]], n: int, baseline_seconds: float) -> dict:
    """Cheap estimate of the baseline's repeated prefill: one 1-row prefill per prompt, times N-1
    (assumes prefill time grows linearly with rows, so it leans high)."""
    import torch

    with torch.inference_mode():
        _, one_row_s = timed(lambda: [policy.model(input_ids=torch.tensor([ids])) for ids in encoded])
    redundant = (n - 1) * one_row_s
    return {"one_row_prefill_seconds": round(one_row_s, 3), "redundant_prefill_seconds_est": round(redundant, 3),
            "share_of_baseline_time_est": round(redundant / baseline_seconds, 4)}


def sampling_dtypes() -> tuple[tuple[str, ...], dict[str, str]]:
    """The dtypes the sampling stage runs (each side in each), and those it skips with why: bf16 only
    where this CPU computes it natively (emulated, it runs ~50x slower than fp32 and says nothing of
    the engine)."""
    from wofn import models

    if models.native_bf16("cpu"):
        return ("float32", "bfloat16"), {}
    return ("float32",), {"bfloat16": "this CPU has no native bf16 (avx512_bf16 or amx_bf16): torch emulates it"}


def bench_sampling(sizes: dict, peaks: dict) -> dict:
    """Ours (continuous batching), the static engine it replaced and the baseline, each in every
    dtype of `sampling_dtypes`, take turns one round of up to ROUND_PROMPTS prompts at a time, so
    that other work on the machine slows all sides alike; each side's seconds are summed. Ours is
    compared with the baseline and the static engine in the same dtype, and its token rate (prefill
    and generated tokens) given as a share of the bf16 matmul limit measured first."""
    import torch

    from wofn import generation, models
    from wofn.settings import Settings

    models.set_torch_threads(0)
    prompts = sampling_prompts(sizes["prompts"])
    n, max_new_tokens = sizes.get("sampling_n", N), sizes.get("max_new_tokens", MAX_NEW_TOKENS)
    params = generation.SamplingParams(n=n, max_new_tokens=max_new_tokens, temperature=TEMPERATURE)
    dtypes, skipped = sampling_dtypes()
    policies, load_seconds = {}, {}
    for dtype in dtypes:
        policies[dtype], load_seconds[dtype] = load_warm_policy(dtype, prompts)
    tokenizer = policies["float32"].tokenizer
    encoded = {pid: generation.encode_prompt(tokenizer, text, params.max_prompt_tokens) for pid, text in prompts}
    for dtype in dtypes:
        baseline_sampling(policies[dtype], [encoded[prompts[0][0]]], generation.SamplingParams(n=2, max_new_tokens=4))
    torch.manual_seed(params.seed)
    sides = [(who, dtype) for dtype in dtypes for who in ("ours", "static", "baseline")]
    totals = {s: {"seconds": 0.0, "candidates": 0, "generated_tokens": 0} for s in sides}
    batches = length_batches(prompts)
    rounds = [prompts[i:i + ROUND_PROMPTS] for i in range(0, len(prompts), ROUND_PROMPTS)]

    def bf16_share(dtype: str, tokens: int, seconds: float) -> float:
        """Ours' (prefill + generated) `tokens` in `seconds` as a share of the bf16 matmul limit."""
        return mfu(models.matmul_params(policies[dtype].model), tokens, seconds,
                   peaks.get("bfloat16"))["fraction_of_peak"]

    first_call = {}
    for dtype in dtypes:  # a sampling worker's first shard: ours allocates its slot buffers, later shards reuse them
        (cands, tokens), seconds = timed(ours_sampling, policies[dtype], longest_first(rounds[0]), params)
        first_call[dtype] = {**side(seconds, candidates=cands, generated_tokens=tokens),
                             "share_of_bf16_matmul_limit": bf16_share(
                                 dtype, tokens + sum(len(encoded[pid]) for pid, _ in rounds[0]), seconds)}
        log(f"sampling: ours {dtype}, first call (untimed in the rounds): {seconds:.1f}s, {tokens} tokens")
    for k, part in enumerate(rounds):
        part_batches = length_batches(part)
        log(f"sampling: round {k + 1}/{len(rounds)} ({len(part)} prompts x N={n}): "
            + ", ".join(f"{who} {dtype}" for who, dtype in sides))
        for who, dtype in sides:
            if who == "baseline":
                (cands, tokens), seconds = timed(baseline_sampling, policies[dtype],
                                                 [encoded[pid] for pid, _ in part], params)
            elif who == "static":
                (cands, tokens), seconds = timed(static_sampling, policies[dtype], part_batches, params)
            else:
                (cands, tokens), seconds = timed(ours_sampling, policies[dtype], longest_first(part), params)
            log(f"  {who} {dtype}: {seconds:.1f}s, {tokens} tokens")
            totals[who, dtype]["seconds"] += seconds
            totals[who, dtype]["candidates"] += cands
            totals[who, dtype]["generated_tokens"] += tokens
    prefill = sum(map(len, encoded.values()))
    ours, baseline, static = {}, {}, {}
    for dtype in dtypes:
        t = totals["ours", dtype]
        params_matmul = models.matmul_params(policies[dtype].model)
        ours[dtype] = side(t["seconds"], candidates=t["candidates"], generated_tokens=t["generated_tokens"])
        ours[dtype]["prefill_tokens"] = prefill
        ours[dtype]["prefill_tokens_padded"] = padded_prefill_tokens(encoded, batches)
        ours[dtype]["prefill_tokens_padded_in_arrival_order"] = padded_prefill_tokens(
            encoded, [prompts[i:i + SAMPLE_BATCH] for i in range(0, len(prompts), SAMPLE_BATCH)])
        ours[dtype]["mfu"] = mfu(params_matmul, t["generated_tokens"] + prefill, t["seconds"], peaks.get(dtype))
        ours[dtype]["share_of_bf16_matmul_limit"] = bf16_share(dtype, t["generated_tokens"] + prefill, t["seconds"])
        ours[dtype]["first_call"] = first_call[dtype]
        t = totals["static", dtype]
        static[dtype] = side(t["seconds"], candidates=t["candidates"], generated_tokens=t["generated_tokens"])
        t = totals["baseline", dtype]
        baseline[dtype] = side(t["seconds"], candidates=t["candidates"], generated_tokens=t["generated_tokens"])
        baseline[dtype]["prefill_tokens"] = n * prefill
        log(f"sampling {dtype}: ours {ours[dtype]['seconds']:.1f}s vs static {static[dtype]['seconds']:.1f}s "
            f"vs baseline {baseline[dtype]['seconds']:.1f}s")
    baseline_prefill = prefill_share_estimate(policies["float32"], list(encoded.values()), n,
                                              baseline["float32"]["seconds"])
    return {
        "config": {"policy": POLICY, "prompts": len(prompts), "n": n, "max_new_tokens": max_new_tokens,
                   "temperature": TEMPERATURE, "ours_slots": Settings.sample_slots,
                   "ours": "continuous batching: each round's prompts in one call, longest first, "
                           f"{Settings.sample_slots} slots (as beam_jobs.sample_candidates samples a shard)",
                   "static_batch_prompts": SAMPLE_BATCH,
                   "static": "the engine before continuous batching: length-sorted batches of "
                             f"{SAMPLE_BATCH} prompts, each decoded until its longest row ends",
                   "round_prompts": ROUND_PROMPTS,
                   "baseline": f"per-prompt model.generate(do_sample=True, temperature={TEMPERATURE}, "
                               f"max_new_tokens={max_new_tokens}, num_return_sequences={n}) in the same dtype as "
                               "ours, transformers' default top_k=50",
                   "ours_extra_work": "per-row seeded generators, temperature-1 log-probs of every token",
                   "ours_first_call": "before the rounds, ours samples the first round once per dtype, as a "
                                      "sampling worker's first shard: it allocates the slot engine's key and value "
                                      "buffers, which later calls on the same model reuse (ours.<dtype>.first_call); "
                                      "the static engine and the baseline keep nothing between calls",
                   "dtypes": list(dtypes), "dtypes_skipped": skipped,
                   "timing": "the sides take turns round by round; seconds summed per side"},
        "ours": ours,
        "static": static,
        "baseline": baseline,
        "speedup_vs_static": {dtype: round(static[dtype]["seconds"] / ours[dtype]["seconds"], 3) for dtype in dtypes},
        "speedup": {dtype: round(baseline[dtype]["seconds"] / ours[dtype]["seconds"], 3) for dtype in dtypes},
        "speedup_generated_tokens_per_s": {
            dtype: round(ours[dtype]["generated_tokens_per_s"] / baseline[dtype]["generated_tokens_per_s"], 3)
            for dtype in dtypes},
        "load_seconds": {k: round(v, 2) for k, v in load_seconds.items()},
        "baseline_prefill": baseline_prefill,
    }


# --- scoring ---------------------------------------------------------------------------------

def scoring_inputs(count: int) -> tuple[list[str], list[str]]:
    """(prompt, chosen) and (prompt, rejected) of the first `count` HH test pairs."""
    from wofn import data
    from wofn.paths import DATA_DIR

    rows = data.load_preferences(DATA_DIR / "hh_test.parquet", limit=count).to_pylist()
    prompts = [row["prompt"] for row in rows for _ in (0, 1)]
    responses = [row[key] for row in rows for key in ("chosen", "rejected")]
    return prompts, responses


def baseline_scores(rm, prompts: list[str], responses: list[str], max_length: int = RM_MAX_LENGTH) -> list[float]:
    """The common way: encode one sequence, one forward, read the scalar; repeat."""
    import torch

    from wofn import rm_format

    rewards = []
    with torch.inference_mode():
        for prompt, response in zip(prompts, responses):
            ids = torch.tensor([rm_format.encode(rm.tokenizer, prompt, response, max_length)])
            rewards.append(float(rm.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, 0]))
    return rewards


def bench_scoring(sizes: dict, peaks: dict) -> dict:
    from wofn import models, rm_format, scoring

    models.set_torch_threads(0)
    prompts, responses = scoring_inputs(sizes["score_pairs"])
    pairs = len(prompts) // 2
    ours, rewards, load_seconds, tokens = {}, {}, {}, 0
    for dtype in ("float32", "bfloat16"):
        rm, load_seconds[dtype] = timed(models.load_reward_model, RM, dtype=dtype)
        scoring.score(rm, prompts[:2], responses[:2], RM_MAX_LENGTH)  # warm-up
        tokens = sum(len(rm_format.encode(rm.tokenizer, p, r, RM_MAX_LENGTH)) for p, r in zip(prompts, responses))
        if dtype == "float32":  # the baseline runs on the same fp32 model, alternating with ours
            baseline_scores(rm, prompts[:2], responses[:2])
            log(f"scoring: ours float32 and the batch-size-1 baseline, {len(prompts)} sequences, best of {REPEATS}")
            (rewards[dtype], seconds), (base_rewards, base_s) = best_of(
                REPEATS, (scoring.score, rm, prompts, responses, RM_MAX_LENGTH),
                (baseline_scores, rm, prompts, responses))
            default_budget = scoring.default_token_budget(next(rm.model.parameters()).device)
        else:
            log(f"scoring: ours {dtype}, {len(prompts)} sequences, best of {REPEATS}")
            [(rewards[dtype], seconds)] = best_of(REPEATS, (scoring.score, rm, prompts, responses, RM_MAX_LENGTH))
        ours[dtype] = side(seconds, pairs=pairs, sequences=len(prompts), tokens=tokens)
        ours[dtype]["mfu"] = mfu(models.matmul_params(rm.model), tokens, seconds, peaks.get(dtype))
        del rm
    diffs = {dtype: max(abs(a - b) for a, b in zip(values, base_rewards)) for dtype, values in rewards.items()}
    if diffs["float32"] > 1e-4:
        log(f"!!! scoring MISMATCH: ours and baseline fp32 rewards differ by up to {diffs['float32']:.3g} (> 1e-4)")
    return {
        "config": {"reward_model": f"{RM} + untrained scalar head", "max_length": RM_MAX_LENGTH,
                   "token_budget": default_budget,
                   "baseline": "batch-size-1 loop, rm_format.encode + one forward per sequence, inference_mode, fp32"},
        "ours": ours,
        "baseline": {"dtype": "float32", **side(base_s, pairs=pairs, sequences=len(prompts), tokens=tokens)},
        "speedup": {dtype: round(base_s / figs["seconds"], 3) for dtype, figs in ours.items()},
        "rewards_max_abs_diff_vs_baseline": {k: float(f"{v:.3g}") for k, v in diffs.items()},
        "rewards_agree_1e-4_fp32": diffs["float32"] <= 1e-4,
        "load_seconds": {k: round(v, 2) for k, v in load_seconds.items()},
    }


def decoder_scoring_inputs(count: int) -> tuple[list[str], list[str]]:
    """`count` HH test prompts x N responses each (the HH responses of neighbouring pairs)."""
    from wofn import data
    from wofn.paths import DATA_DIR

    rows = data.load_preferences(DATA_DIR / "hh_test.parquet", limit=count + N).to_pylist()
    pool = [row[key] for row in rows for key in ("chosen", "rejected")]
    prompts = [rows[i]["prompt"] for i in range(count) for _ in range(N)]
    responses = [pool[(2 * i + k) % len(pool)] for i in range(count) for k in range(N)]
    return prompts, responses


def bench_scoring_decoder(sizes: dict, peaks: dict) -> dict:
    from wofn import models, rm_format, scoring

    models.set_torch_threads(0)
    prompts, responses = decoder_scoring_inputs(sizes["decoder_prompts"])
    rm, load_s = timed(models.load_reward_model, DECODER_RM, dtype="bfloat16")
    scoring.score(rm, prompts[:N], responses[:N], DECODER_RM_MAX_LENGTH)  # warm-up, both paths
    scoring.score(rm, prompts[:N], responses[:N], DECODER_RM_MAX_LENGTH, share_prefix=False)
    encoded = [rm_format.encode(rm.tokenizer, p, r, DECODER_RM_MAX_LENGTH) for p, r in zip(prompts, responses)]
    tokens = sum(map(len, encoded))
    shared_tokens = sum(scoring._common_prefix_length(encoded[i:i + N]) for i in range(0, len(encoded), N))
    baseline_scores(rm, prompts[:1], responses[:1], DECODER_RM_MAX_LENGTH)
    log(f"scoring_decoder: ours with and without shared prefixes, and the batch-size-1 baseline, "
        f"{len(prompts)} sequences, best of {REPEATS}")
    (shared, shared_s), (plain, plain_s), (base, base_s) = best_of(
        REPEATS, (scoring.score, rm, prompts, responses, DECODER_RM_MAX_LENGTH),
        (lambda: scoring.score(rm, prompts, responses, DECODER_RM_MAX_LENGTH, share_prefix=False),),
        (baseline_scores, rm, prompts, responses, DECODER_RM_MAX_LENGTH))
    params = models.matmul_params(rm.model)
    computed = tokens - (N - 1) * shared_tokens
    ours = side(shared_s, sequences=len(prompts), tokens=tokens)
    ours["computed_tokens"] = computed
    ours["mfu"] = mfu(params, computed, shared_s, peaks.get("bfloat16"))
    return {
        "config": {"reward_model": f"{DECODER_RM} + untrained scalar head", "dtype": "bfloat16",
                   "max_length": DECODER_RM_MAX_LENGTH, "prompts": sizes["decoder_prompts"], "n": N,
                   "baseline": "batch-size-1 loop, one forward per sequence, bf16"},
        "ours": ours,
        "ours_without_prefix_sharing": side(plain_s, sequences=len(prompts), tokens=tokens),
        "baseline": side(base_s, sequences=len(prompts), tokens=tokens),
        "shared_prefix_tokens_share": round((N - 1) * shared_tokens / tokens, 4),
        "speedup": round(base_s / shared_s, 3),
        "speedup_from_prefix_sharing": round(plain_s / shared_s, 3),
        "rewards_max_abs_diff_shared_vs_plain": float(f"{max(abs(a - b) for a, b in zip(shared, plain)):.3g}"),
        "rewards_max_abs_diff_vs_baseline": float(f"{max(abs(a - b) for a, b in zip(shared, base)):.3g}"),
        "load_seconds": round(load_s, 2),
    }


def bench_training(sizes: dict, peaks: dict) -> dict:
    """Training throughput of the default profile's RM recipe, bf16 autocast vs fp32, sides alternating."""
    from wofn import data, models, profiles, stages, training
    from wofn.paths import DATA_DIR

    models.set_torch_threads(0)
    settings = profiles.DEFAULT
    pairs = data.load_preferences(DATA_DIR / "hh_train.parquet", sizes["train_pairs"]).to_pylist()
    ours: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        def train(bf16: bool) -> dict:
            config = stages.train_config(settings, epochs=1.0, bf16=bf16, val_fraction=0.0, log_every=1000)
            return training.train_reward_model(settings.rm_backbone, pairs, config, Path(tmp) / f"rm-{bf16}")
        train(True)  # warm-up: model files cached, kernels built
        for repeat in range(REPEATS):
            for label, bf16 in (("fp32", False), ("bf16", True)):
                log(f"training: {label}, {len(pairs)} pairs, repeat {repeat + 1}/{REPEATS}")
                metrics = train(bf16)
                if label not in ours or metrics["seconds"] < ours[label]["seconds"]:
                    ours[label] = side(metrics["seconds"], pairs=len(pairs))
    # the matmul-bound limit: 6 FLOPs per parameter and token (forward and backward) over the tokens of
    # both sequences of every pair, as trained (truncated to max_length; the batches' padding not counted)
    rm = models.load_reward_model(settings.rm_backbone)
    params = models.matmul_params(rm.model)
    tokens = sum(len(seq) for pair in pairs for seq in training.POINTWISE.encode(rm.tokenizer, pair,
                                                                                  settings.rm_max_length))
    for label, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
        ours[label]["mfu"] = mfu(params, tokens, ours[label]["seconds"], peaks.get(dtype), flops_per_param_token=6)
        ours[label]["share_of_bf16_matmul_limit"] = mfu(params, tokens, ours[label]["seconds"], peaks.get("bfloat16"),
                                                        flops_per_param_token=6)["fraction_of_peak"]
    limit = {dtype: round(peak * 1e9 / (6 * params * tokens / len(pairs)), 2) for dtype, peak in peaks.items() if peak}
    return {"config": {"reward_model": settings.rm_backbone, "max_length": settings.rm_max_length,
                       "batch_size": settings.rm_batch_size, "train_pairs": len(pairs),
                       "tokens_per_pair": round(tokens / len(pairs), 1), "baseline": "the same training in fp32"},
            "ours": ours, "speedup_bf16_vs_fp32": round(ours["fp32"]["seconds"] / ours["bf16"]["seconds"], 3),
            "matmul_limit_pairs_per_s": limit}


def scoring_memory_worker(candidates_dir: str, output_dir: str) -> dict:
    """Runs in a fresh spawned process: the scoring Beam job, its seconds and peak RSS."""
    from beam_jobs import score_candidates

    rss_before = peak_rss_mb()
    stats, seconds = timed(score_candidates.run, [
        "--candidates", candidates_dir, "--output", output_dir, "--reward-model", "tiny-bert",
        "--max-length", "128", "--torch-threads", "1"], save_main_session=False)
    return {"seconds": round(seconds, 2), "peak_rss_mb": peak_rss_mb(), "rss_before_work_mb": rss_before,
            "candidates_scored": stats.get("candidates_scored")}


def bench_scoring_memory(sizes: dict, peaks: dict) -> dict:
    results = {}
    with tempfile.TemporaryDirectory(prefix="wofn-bench-") as tmp:
        for count in sizes["memory_candidates"]:
            root = Path(tmp) / str(count)
            log(f"scoring_memory: {count:,} candidates through the score_candidates job in a spawned process")
            candidates_dir, _ = write_synthetic_tables(root, count // N, response_words=48)
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                results[count] = pool.submit(scoring_memory_worker, str(candidates_dir), str(root / "scores")).result()
    small, large = (results[c] for c in sizes["memory_candidates"])
    ratio = round(large["peak_rss_mb"] / small["peak_rss_mb"], 3)
    return {
        "config": {"job": "beam_jobs.score_candidates, DirectRunner in-memory, 1 torch thread",
                   "reward_model": "tiny-bert (random weights)", "response_words": 48},
        "by_candidates": {str(k): v for k, v in results.items()},
        "peak_rss_ratio_large_over_small": ratio,
        "work_ratio": sizes["memory_candidates"][1] / sizes["memory_candidates"][0],
        "within_1.5x": ratio <= 1.5,
    }


# --- pairs -----------------------------------------------------------------------------------

def write_synthetic_tables(root: Path, prompts: int, seed: int = 0, response_words: int = 0) -> tuple[Path, Path]:
    """CANDIDATES and CANDIDATE_SCORES folders for `prompts` x N synthetic candidates
    (`response_words` extra filler words per response, for realistic text sizes)."""
    import numpy as np
    import pyarrow as pa

    from wofn import catalog, schemas

    rng = np.random.default_rng(seed)
    rows = prompts * N
    prompt_idx, cand_idx = np.repeat(np.arange(prompts), N), np.tile(np.arange(N, dtype=np.int32), prompts)
    prompt_ids = [f"{p:016x}" for p in prompt_idx.tolist()]
    num_tokens = rng.integers(1, MAX_NEW_TOKENS + 1, rows).astype(np.int32)
    logprob_mean = -rng.gamma(2.0, 0.6, rows)

    filler = " and so on" * (response_words // 3)

    def const(value, type_):
        return pa.array(np.full(rows, value), type_)

    candidates = {
        "prompt_id": pa.array(prompt_ids), "candidate_idx": pa.array(cand_idx),
        "prompt": pa.array([f"\n\nHuman: synthetic question {p}?\n\nAssistant:" for p in prompt_idx.tolist()]),
        "response": pa.array([f"synthetic answer {p}-{c}" + filler
                              for p, c in zip(prompt_idx.tolist(), cand_idx.tolist())]),
        "num_tokens": pa.array(num_tokens), "logprob_sum": pa.array(logprob_mean * num_tokens),
        "logprob_mean": pa.array(logprob_mean),
        "finish_reason": pa.array(np.where(num_tokens == MAX_NEW_TOKENS, "length", "stop")),
        "temperature": const(TEMPERATURE, pa.float32()), "top_p": const(1.0, pa.float32()),
        "max_new_tokens": const(MAX_NEW_TOKENS, pa.int32()), "seed": pa.array(rng.integers(0, 2**60, rows)),
        "policy": const("synthetic-policy", pa.string()), "policy_revision": const("sha256:0", pa.string()),
    }
    scores = {
        "prompt_id": pa.array(prompt_ids), "candidate_idx": pa.array(cand_idx),
        "reward": pa.array(rng.normal(0.0, 1.0, rows)),
        "reward_model": const("synthetic-rm", pa.string()), "reward_model_revision": const("sha256:0", pa.string()),
    }
    out = []
    for name, columns, schema in (("candidates", candidates, schemas.CANDIDATES),
                                  ("candidate_scores", scores, schemas.CANDIDATE_SCORES)):
        added = {f.name: pa.nulls(rows, f.type) for f in schema if schemas.is_added(f) and f.name not in columns}
        catalog.write_parquet(pa.Table.from_pydict({**columns, **added}, schema=schema), root / name)
        out.append(root / name)
    return out[0], out[1]


def ours_pairs(candidates_dir: Path, scores_dir: Path, work_dir: Path) -> dict:
    """What the pair assets do: draw bucket by bucket of prompts into files, stream the pairs out of
    them, stream the filters over that folder (west_of_n only, as the baseline)."""
    from wofn import pairs

    pairs.write_draws(candidates_dir, scores_dir, work_dir / "pair_draws", strategies=("west_of_n",))
    pairs.write_pairs(work_dir / "pair_draws", "west_of_n", work_dir / "west_of_n_pairs")
    funnel, _ = pairs.write_filtered(work_dir / "west_of_n_pairs", work_dir / "filtered_pairs",
                                     CONFIDENCE_QUANTILE, LOGPROB_QUANTILE)
    return pairs.funnel_steps(funnel, margin=False, max_tokens=False)


def quantile_cont(values: list[float], q: float) -> float:
    """DuckDB's quantile_cont: linear interpolation at position q * (n - 1) of the sorted values."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def baseline_pairs(candidates_dir: Path, scores_dir: Path, work_dir: Path) -> dict:
    """The common way: rows as Python dicts, grouped by prompt in a dict, then filtered."""
    import pyarrow.parquet as pq

    candidates = pq.read_table(candidates_dir).to_pylist()
    scores = {(s["prompt_id"], s["candidate_idx"]): s for s in pq.read_table(scores_dir).to_pylist()}
    groups = defaultdict(list)
    for cand in candidates:
        score = scores.get((cand["prompt_id"], cand["candidate_idx"]))
        if score is not None and score["reward"] is not None and math.isfinite(score["reward"]):
            groups[cand["prompt_id"]].append({**cand, "reward": score["reward"], "reward_model": score["reward_model"]})
    selected = []
    for prompt_id in sorted(groups):
        group = groups[prompt_id]
        best = min(group, key=lambda c: (-c["reward"], c["candidate_idx"]))
        worst = min(group, key=lambda c: (c["reward"], -c["candidate_idx"]))
        margin = best["reward"] - worst["reward"]
        if len(group) < 2 or margin <= 0 or best["response"] == worst["response"]:
            continue
        selected.append({"prompt_id": prompt_id, "prompt": best["prompt"], "chosen": best["response"],
                         "rejected": worst["response"], "margin": margin, "confidence": 1 / (1 + math.exp(-margin)),
                         "chosen_logprob_mean": best["logprob_mean"], "rejected_logprob_mean": worst["logprob_mean"]})
    min_confidence = quantile_cont([p["confidence"] for p in selected], CONFIDENCE_QUANTILE)
    min_logprob = quantile_cont([p[k] for p in selected for k in ("chosen_logprob_mean", "rejected_logprob_mean")],
                                LOGPROB_QUANTILE)
    confident = [p for p in selected if p["confidence"] >= min_confidence]
    kept = [p for p in confident
            if p["chosen_logprob_mean"] >= min_logprob and p["rejected_logprob_mean"] >= min_logprob]
    return {"west_of_n_pairs": len(selected), "confidence_filter": len(confident), "likelihood_filter": len(kept)}


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: Linux carries the parent's RSS
    at fork into a spawned child's ru_maxrss (kept across exec), which would hide the child's own."""
    try:
        status = Path("/proc/self/status").read_text()
        return round(int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) / 1024, 1)
    except (OSError, AttributeError):
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def pairs_worker(which: str, candidates_dir: str, scores_dir: str, work_dir: str) -> dict:
    """Runs in a fresh spawned process: one side's seconds, funnel and the process's peak RSS."""
    fn = {"ours": ours_pairs, "baseline": baseline_pairs}[which]
    rss_before = peak_rss_mb()
    funnel, seconds = timed(fn, Path(candidates_dir), Path(scores_dir), Path(work_dir))
    return {"seconds": round(seconds, 3), "funnel": funnel, "peak_rss_mb": peak_rss_mb(),
            "rss_before_work_mb": rss_before}


def run_in_fresh_process(which: str, *dirs: Path) -> dict:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(pairs_worker, which, *map(str, dirs)).result()


def bench_pairs(sizes: dict, peaks: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="wofn-bench-") as tmp:
        root = Path(tmp)
        log(f"pairs: writing {sizes['pair_prompts'] * N:,} synthetic candidates")
        (candidates_dir, scores_dir), build_s = timed(write_synthetic_tables, root, sizes["pair_prompts"])
        results = {}
        for which in ("ours", "baseline"):
            log(f"pairs: {which} in a spawned process")
            work_dir = root / which
            work_dir.mkdir()
            results[which] = run_in_fresh_process(which, candidates_dir, scores_dir, work_dir)
    ours, baseline = results["ours"], results["baseline"]
    counts_match = ours["funnel"] == baseline["funnel"]
    if not counts_match:
        log(f"!!! pairs MISMATCH: ours {ours['funnel']} vs baseline {baseline['funnel']}")
    return {
        "config": {"candidates": sizes["pair_prompts"] * N, "prompts": sizes["pair_prompts"], "n": N,
                   "confidence_quantile": CONFIDENCE_QUANTILE, "logprob_quantile": LOGPROB_QUANTILE,
                   "ours": "pairs.write_draws (by bucket of prompts) + write_pairs + write_filtered (streamed, "
                           "DuckDB spilling)",
                   "baseline": "pyarrow to_pylist + dict group-by + sorted quantiles, pure Python",
                   "seconds_exclude": "process start and imports (rss_before_work_mb is the RSS after imports)"},
        "ours": ours,
        "baseline": baseline,
        "speedup": round(baseline["seconds"] / ours["seconds"], 3),
        "peak_rss_ratio_baseline_over_ours": round(baseline["peak_rss_mb"] / ours["peak_rss_mb"], 3),
        "counts_match": counts_match,
        "synthetic_data_build_seconds": round(build_s, 2),
    }


def bench_pairs_scale(sizes: dict, peaks: dict) -> dict:
    """Pair selection and filtering (ours only: the pure-Python baseline does not fit memory at 10^7)
    at two sizes ten times apart: seconds and peak RSS of each, and their ratios."""
    runs = {}
    for prompts in sizes["scale_pair_prompts"]:
        with tempfile.TemporaryDirectory(prefix="wofn-bench-") as tmp:
            root = Path(tmp)
            log(f"pairs_scale: writing {prompts * N:,} synthetic candidates")
            (candidates_dir, scores_dir), build_s = timed(write_synthetic_tables, root, prompts)
            (root / "ours").mkdir()
            log(f"pairs_scale: {prompts * N:,} candidates in a spawned process")
            result = run_in_fresh_process("ours", candidates_dir, scores_dir, root / "ours")
        runs[str(prompts * N)] = {**result, "candidates_per_s": rate(prompts * N, result["seconds"]),
                                  "synthetic_data_build_seconds": round(build_s, 2)}
    small, large = (runs[str(p * N)] for p in sizes["scale_pair_prompts"])
    work_mb = {k: r["peak_rss_mb"] - r["rss_before_work_mb"] for k, r in (("small", small), ("large", large))}
    return {
        "config": {"candidates": [p * N for p in sizes["scale_pair_prompts"]], "n": N,
                   "ours": "pairs.write_draws (by bucket of prompts) + write_pairs + write_filtered (streamed, "
                           "DuckDB spilling)",
                   "seconds_exclude": "process start and imports"},
        "runs": runs,
        "seconds_ratio_large_over_small": round(large["seconds"] / small["seconds"], 2),
        "peak_rss_ratio_large_over_small": round(large["peak_rss_mb"] / small["peak_rss_mb"], 2),
        "work_rss_mb": {k: round(v, 1) for k, v in work_mb.items()},
    }


# --- main ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--quick", action="store_true", help=f"smaller sizes: {SIZES['quick']}")
    parser.add_argument("--prompts", type=int, help="sampling prompts (overrides the size preset)")
    parser.add_argument("--pair-prompts", type=int, help="synthetic prompts for the pairs stage (x8 candidates)")
    parser.add_argument("--n", type=int, help=f"the sampling stage's samples per prompt (default {N})")
    parser.add_argument("--max-new-tokens", type=int,
                        help=f"the sampling stage's new tokens (default {MAX_NEW_TOKENS})")
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; expected some of {list(STAGES)}")
    sizes = dict(SIZES["quick" if args.quick else "full"])
    sizes.update({k: v for k, v in (("prompts", args.prompts), ("pair_prompts", args.pair_prompts),
                                    ("sampling_n", args.n), ("max_new_tokens", args.max_new_tokens)) if v})

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    peaks: dict = {}
    if "mfu" not in stages and {"sampling", "scoring", "scoring_decoder"} & set(stages):
        stages.insert(0, "mfu")  # the mfu fields need the peak
    for stage in (s for s in STAGES if s in stages):
        load_before = os.getloadavg()[0]
        log(f"stage {stage} (sizes {sizes})")
        if stage == "mfu":
            figures = bench_mfu(sizes)
            peaks = figures["peak_gflops"]
        else:
            figures = {"sampling": bench_sampling, "scoring": bench_scoring, "scoring_decoder": bench_scoring_decoder,
                       "scoring_memory": bench_scoring_memory, "training": bench_training,
                       "pairs": bench_pairs, "pairs_scale": bench_pairs_scale}[stage](sizes, peaks)
        emit(stage, figures, load_before)
    log(f"done in {time.perf_counter() - _START:.1f}s")


if __name__ == "__main__":
    main()
