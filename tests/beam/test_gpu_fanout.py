"""Fan-out to GPUs, shown on a CPU: one worker process per GPU of a faked N-GPU node, each on its
own device; out-of-memory batches halved down to one item; the `gpu` profile resolving."""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import threading
import time

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs import failpoints, inference, sample_candidates, score_candidates
from beam_jobs.inference import Runtime
from wofn import devices, generation, profiles, stages, vllm_sampling


def _worker(visible, gpus, locks, claimed, release):
    claimed.put(devices.claim("cuda", gpus, visible=visible, locks=locks))
    claimed.put(devices.claim("cuda", gpus, visible=visible, locks=locks))  # a second load: the same GPU
    release.wait(60)


def _claims(workers: int, visible: int, gpus: int, locks) -> list[tuple[str, str]]:
    """What `workers` live processes of a node with `visible` GPUs claim (twice each), all at once."""
    ctx = mp.get_context("spawn")
    claimed, release = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_worker, args=(visible, gpus, str(locks), claimed, release)) for _ in range(workers)]
    for p in procs:
        p.start()
    try:
        got = [(claimed.get(timeout=300), claimed.get(timeout=300)) for _ in procs]  # spawn + imports: slow when busy
    finally:
        release.set()
        for p in procs:
            p.join(60)
    return got


def test_n_workers_on_a_faked_n_gpu_node_load_on_n_distinct_gpus(tmp_path):
    got = _claims(workers=4, visible=4, gpus=0, locks=tmp_path)
    assert all(first == second for first, second in got), got
    assert sorted(first for first, _ in got) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]


def test_gpus_setting_limits_the_gpus_and_a_worker_beyond_them_shares_one(tmp_path):
    got = [first for first, _ in _claims(workers=3, visible=4, gpus=2, locks=tmp_path)]
    assert len(got) == 3 and set(got) == {"cuda:0", "cuda:1"}, got  # gpus: 2 of four; the third worker shares


def _free_within(lock, seconds: float) -> bool:
    """Whether `lock` can be taken within `seconds`: on a busy machine the second round once started
    while a first-round lock still looked held (CI of 83e1099), so the test waits for the release
    it asserts instead of assuming it the moment `join` returns."""
    deadline = time.monotonic() + seconds
    while True:
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
        finally:
            os.close(fd)  # closing drops a lock taken here
        time.sleep(0.05)


def test_locks_are_released_when_a_worker_exits(tmp_path):
    assert sorted(a for a, _ in _claims(2, 2, 0, tmp_path)) == ["cuda:0", "cuda:1"]
    assert all(_free_within(tmp_path / f"cuda-{k}.lock", 60) for k in range(2))
    assert sorted(a for a, _ in _claims(2, 2, 0, tmp_path)) == ["cuda:0", "cuda:1"]


@pytest.mark.parametrize("device, gpus, visible, expected", [
    ("cpu", 0, 4, "cpu"), ("cuda:3", 0, 4, "cuda:3"), ("cuda", 0, 1, "cuda:0"), ("cuda", 1, 8, "cuda:0"),
])
def test_one_device_or_an_explicit_one_is_used_as_given(tmp_path, device, gpus, visible, expected):
    assert devices.claim(device, gpus, visible=visible, locks=tmp_path) == expected


def test_negative_gpus_is_refused():
    with pytest.raises(ValueError, match="gpus must be >= 0"):
        devices.gpus_to_use(-1, 4)


@pytest.mark.parametrize("device, gpus, args, expected", [
    ("cuda", 0, ["--runner=DirectRunner"], ["--direct_running_mode=multi_processing", "--direct_num_workers=4"]),
    ("cuda", 2, [], ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]),
    ("cuda", 0, ["--direct_num_workers=3"], []),  # the user's own worker count stands
    ("cuda", 0, ["--runner=DaskRunner"], []),  # Dask workers claim GPUs themselves
    ("cpu", 0, ["--runner=DirectRunner"], []),
    ("cuda:1", 0, ["--runner=DirectRunner"], []),
])
def test_the_direct_runner_runs_one_worker_process_per_gpu(device, gpus, args, expected):
    runtime = Runtime(batch_size=1, device=device, gpus=gpus)
    assert inference.worker_options(runtime, args, visible=4) == args + expected


def _halving_calls(n: int, fits: int) -> tuple[list[int], list, list]:
    calls = []

    def call(items):
        calls.append(len(items))
        if len(items) > fits:
            raise MemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [x * 10 for x in items]

    done, failed = inference.run_halving(list(range(n)), call)
    return calls, done, failed


def test_out_of_memory_halves_the_batch_until_it_fits():
    calls, done, failed = _halving_calls(8, fits=2)
    assert calls == [8, 4, 2, 2, 4, 2, 2]
    assert failed == [] and [x for items, _ in done for x in items] == list(range(8))
    assert [y for _, out in done for y in out] == [x * 10 for x in range(8)]


def test_out_of_memory_on_one_item_fails_that_item_alone():
    calls, done, failed = _halving_calls(3, fits=0)
    assert calls == [3, 2, 1, 1, 1] and done == []
    assert [item for item, _ in failed] == [0, 1, 2] and all(inference.is_out_of_memory(e) for _, e in failed)


def _sample_args(prompts_file, out):
    return ["--prompts", str(prompts_file), "--output", str(out), "--policy", "tiny-llama", "--n", "2",
            "--max-new-tokens", "4", "--seed", "5", "--batch-size", "4", "--num-shards", "1"]


def _rows(folder):
    return sorted((r for f in sorted(folder.glob("*.parquet")) for r in pq.read_table(f).to_pylist()),
                  key=lambda r: (r["prompt_id"], r["candidate_idx"]))


def test_sampling_halves_a_batch_that_runs_out_of_memory_down_to_one_prompt(tmp_path, prompts_file, monkeypatch):
    clean = sample_candidates.run(_sample_args(prompts_file, tmp_path / "clean"), save_main_session=False)
    monkeypatch.setenv(failpoints.OOM_ENV, "1")
    halved = sample_candidates.run(_sample_args(prompts_file, tmp_path / "halved"), save_main_session=False)
    # the shard's 5 prompts in one continuous-batching call: 5 -> 3 + 2, 3 -> 2 + 1, then each 2 -> 1 + 1
    assert halved["oom_halvings"] == 4 and "oom_halvings" not in clean
    assert halved["errors"] == 0 and halved["candidates"] == clean["candidates"] == 10
    keys = [(r["prompt_id"], r["candidate_idx"], r["seed"]) for r in _rows(tmp_path / "halved")]
    assert keys == [(r["prompt_id"], r["candidate_idx"], r["seed"]) for r in _rows(tmp_path / "clean")]


def test_sampling_dead_letters_a_prompt_that_runs_out_of_memory_alone(tmp_path, prompts_file, monkeypatch):
    monkeypatch.setenv(failpoints.OOM_ENV, "0")
    with pytest.raises(RuntimeError, match="5 of 5 prompts or candidates failed"):
        sample_candidates.run(_sample_args(prompts_file, tmp_path / "c"), save_main_session=False)
    errors = _rows(tmp_path / "c_errors")
    assert len(errors) == 5 and {e["reason"] for e in errors} == {"out_of_memory"}
    assert all("CUDA out of memory" in e["detail"] for e in errors)


def test_the_longest_prompts_of_a_shard_are_sampled_first(tmp_path, prompts_file, monkeypatch):
    """Continuous batching takes the shard in one call, longest prompt first; a policy that cannot
    decode in slots gets length-sorted batches of --batch-size, the longest batch first."""
    calls = []
    real = generation.sample

    def recording(policy, prompts, params, **kwargs):
        calls.append(([len(text) for _, text in prompts], kwargs.get("slots")))
        return real(policy, prompts, params, **kwargs)

    monkeypatch.setattr(generation, "sample", recording)
    args = _sample_args(prompts_file, tmp_path / "c")
    args[args.index("--batch-size") + 1] = "2"
    sample_candidates.run(args + ["--slots", "3"], save_main_session=False)
    assert len(calls) == 1 and calls[0][0] == sorted(calls[0][0], reverse=True) and calls[0][1] == 3, calls
    calls.clear()
    monkeypatch.setattr(generation, "slot_engine_supported", lambda model: False)
    sample_candidates.run(args[:args.index("--output") + 1] + [str(tmp_path / "static")]
                          + args[args.index("--output") + 2:], save_main_session=False)
    widths = [max(lengths) for lengths, _ in calls]
    assert len(widths) == 3 and widths == sorted(widths, reverse=True), widths


def test_scoring_halves_a_batch_that_runs_out_of_memory(tmp_path, prompts_file, monkeypatch):
    sample_candidates.run(_sample_args(prompts_file, tmp_path / "cands"), save_main_session=False)
    args = ["--candidates", str(tmp_path / "cands"), "--reward-model", "tiny-bert", "--max-length", "64",
            "--batch-size", "4", "--num-shards", "1"]
    clean = score_candidates.run(args + ["--output", str(tmp_path / "clean")], save_main_session=False)
    monkeypatch.setenv(failpoints.OOM_ENV, "1")
    halved = score_candidates.run(args + ["--output", str(tmp_path / "halved")], save_main_session=False)
    assert halved["oom_halvings"] >= 3 and "oom_halvings" not in clean
    assert halved["candidates_scored"] == clean["candidates_scored"] == 10
    a, b = _rows(tmp_path / "clean"), _rows(tmp_path / "halved")
    assert [(r["prompt_id"], r["candidate_idx"]) for r in a] == [(r["prompt_id"], r["candidate_idx"]) for r in b]
    assert all(abs(x["reward"] - y["reward"]) < 1e-4 for x, y in zip(a, b))
    assert not list((tmp_path / "halved_errors").glob("*.parquet")) or not _rows(tmp_path / "halved_errors")


def test_the_gpu_profile_resolves_to_a_bf16_gpu_run():
    s = profiles.get("gpu")
    assert (s.device, s.gpus, s.max_prompts, s.n, s.max_new_tokens) == ("cuda", 0, None, 16, 256)
    assert stages.rm_bf16(s) is True
    argv = stages.sampling_argv(s, "p", "o", "e")
    for flag, value in [("--device", "cuda"), ("--gpus", "0"), ("--dtype", "bfloat16"), ("--n", "16"),
                        ("--max-new-tokens", "256"), ("--batch-size", "32"), ("--slots", "512"),
                        ("--policy", s.policy)]:
        assert argv[argv.index(flag) + 1] == value, flag
    known, _ = sample_candidates.parse_args(argv)
    assert inference.runtime_from_args(known) == Runtime(32, "cuda", 0, "bfloat16", known.torch_threads)
    scoring = score_candidates.parse_args(stages.scoring_argv(s, "c", "o", "e", "rm"))[0]
    assert (scoring.device, scoring.dtype, scoring.batch_size) == ("cuda", "bfloat16", 256)
    config = stages.train_config(s)
    assert (config.device, config.bf16, config.max_length) == ("cuda", True, 1024)


def test_vllm_rows_say_which_log_probabilities_they_hold():
    class V1:
        def __init__(self, model=None, logprobs_mode="raw_logprobs"):
            pass

    class V0:
        def __init__(self, model=None):
            pass

    assert vllm_sampling.logprob_options(V1) == ({"logprobs_mode": "raw_logprobs"}, "raw")
    assert vllm_sampling.logprob_options(V0) == ({}, "processed")
    env = {"CUDA_VISIBLE_DEVICES": "4,5,6"}
    vllm_sampling.pin_device("cuda:1", env)
    assert env["CUDA_VISIBLE_DEVICES"] == "5"
    env = {}
    vllm_sampling.pin_device("cuda:2", env)
    assert env["CUDA_VISIBLE_DEVICES"] == "2"


def test_torch_engine_rows_hold_raw_log_probabilities(tiny_policy):
    rows = generation.sample(tiny_policy, [("p", "\n\nHuman: hi\n\nAssistant:")],
                             generation.SamplingParams(n=2, max_new_tokens=3))
    assert {r["logprob_mode"] for r in rows} == {"raw"}


class _CountingPolicy(sample_candidates.PolicyHandler):
    loads: list = []
    threads: set = set()

    def _load(self):
        type(self).loads.append(1)
        return super()._load()

    def run_inference(self, batch, model, inference_args=None):
        type(self).threads.add(threading.get_ident())
        return super().run_inference(batch, model, inference_args)


def test_threads_of_one_worker_process_share_one_model_copy():
    """Beam's RunInference shares the loaded model across a process's threads: the DirectRunner's
    multi_threading mode runs shards on several threads, and the policy loads once."""
    prompts = [{"prompt_id": f"p{i}", "prompt": f"\n\nHuman: question {i}?\n\nAssistant:"} for i in range(12)]
    handler = _CountingPolicy("tiny-llama", generation.SamplingParams(n=2, max_new_tokens=2), Runtime(batch_size=2))
    options = PipelineOptions(["--direct_running_mode=multi_threading", "--direct_num_workers=4"])
    with beam.Pipeline(options=options) as p:
        _ = p | beam.Create(prompts, reshuffle=False) | sample_candidates.SampleCandidates(handler, num_shards=12)
    assert len(_CountingPolicy.threads) > 1, "the runner used one thread: nothing shared"
    assert len(_CountingPolicy.loads) == 1
