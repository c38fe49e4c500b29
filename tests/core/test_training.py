"""Bradley-Terry training on an easy, separable toy set with a tiny real model."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from conftest import make_toy_pairs
from safetensors.torch import load_file

from wofn import evaluation, models, stages, training
from wofn.paths import REPO_ROOT, content_hash
from wofn.settings import Settings


def test_training_lowers_loss_and_separates_easy_pairs(tmp_path):
    config = training.TrainConfig(epochs=8, batch_size=8, learning_rate=1e-3, max_length=48, log_every=1, seed=1)
    out = tmp_path / "rm"
    metrics = training.train_reward_model(models.TINY_BERT, make_toy_pairs(48, 0), config, out,
                                          manifest={"role": "test"})
    losses = [r["loss"] for r in metrics["history"]]
    assert losses[-1] < 0.3 < losses[0], losses
    result = evaluation.evaluate(str(out), make_toy_pairs(40, 1))
    assert result["accuracy"] >= 0.95 and result["n"] == 40
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["role"] == "test" and manifest["max_length"] == 48 and manifest["revision"].startswith("sha256:")
    assert manifest["train_config"]["seed"] == 1
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    # the weights really moved away from the backbone
    trained = load_file(out / "model.safetensors")
    backbone = load_file(f"{models.resolve(models.TINY_BERT)}/model.safetensors")
    key = next(k for k in trained if k.endswith("embeddings.word_embeddings.weight"))
    base_key = next(k for k in backbone if k.endswith("embeddings.word_embeddings.weight"))
    assert (trained[key] - backbone[base_key]).abs().max() > 1e-4


def test_untrained_head_is_near_chance(tmp_path):
    result = evaluation.evaluate(models.TINY_BERT, make_toy_pairs(40, 2), max_length=48)
    assert result["accuracy"] < 0.95


def test_config_defaults_are_the_settings():
    """The recipe is declared once: TrainConfig's defaults are the default profile's settings."""
    config, s = training.TrainConfig(), Settings()
    assert (config.epochs, config.batch_size, config.learning_rate, config.warmup_ratio, config.max_length,
            config.seed, config.device, config.val_fraction) == (
        s.rm_epochs, s.rm_batch_size, s.rm_learning_rate, s.rm_warmup_ratio, s.rm_max_length, s.seed, s.device,
        s.rm_val_fraction)
    assert stages.train_config(s, bf16=False, head=None) == config


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="TrainConfig.batch_size: rm_batch_size must be an integer >= 1"):
        training.TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="TrainConfig.grad_accum must be >= 1"):
        training.TrainConfig(grad_accum=0)
    with pytest.raises(ValueError, match="no training pairs"):
        training.train_reward_model(models.TINY_BERT, [], training.TrainConfig(), "unused")


def test_validation_split_is_seeded_and_disjoint():
    pairs = [{"prompt": str(i), "chosen": "a", "rejected": "b"} for i in range(50)]
    train, val = training.split_validation(pairs, 0.2, seed=3)
    assert len(val) == 10 and len(train) == 40
    assert {p["prompt"] for p in train}.isdisjoint({p["prompt"] for p in val})
    assert training.split_validation(pairs, 0.2, seed=3) == (train, val)
    assert training.split_validation(pairs, 0.2, seed=4)[1] != val
    assert training.split_validation(pairs, 0.0, seed=3) == (pairs, [])


def test_best_validation_checkpoint_is_recorded(tmp_path):
    config = training.TrainConfig(epochs=3, batch_size=8, learning_rate=1e-3, max_length=48, seed=2,
                                  val_fraction=0.25, eval_every=2)
    metrics = training.train_reward_model(models.TINY_BERT, make_toy_pairs(40, 5), config, tmp_path / "rm")
    steps = [v["step"] for v in metrics["validations"]]
    assert steps == sorted(steps) and steps[-1] == metrics["steps"] and len(steps) >= 3
    best = max(metrics["validations"], key=lambda v: (v["val_accuracy"], -v["val_loss"]))
    assert metrics["best_step"] == best["step"] and metrics["best_val_accuracy"] == best["val_accuracy"]
    manifest = json.loads((tmp_path / "rm" / "manifest.json").read_text())
    assert manifest["train_metrics"]["val_pairs"] == 10 and manifest["train_metrics"]["best_step"] == best["step"]
    # the saved weights are the best checkpoint's: re-validating them reproduces its accuracy
    _, val = training.split_validation(make_toy_pairs(40, 5), 0.25, 2)
    saved = evaluation.evaluate(str(tmp_path / "rm"), val)
    assert saved["accuracy"] == pytest.approx(best["val_accuracy"])
    # the validation report is the kept (best) pass's margins, the same numbers a fresh evaluation gives
    report = manifest["train_metrics"]["validation"]
    assert report["accuracy"] == pytest.approx(best["val_accuracy"]) and report["n"] == 10
    assert report["mean_margin"] == pytest.approx(saved["mean_margin"], abs=1e-5)
    assert report["length_balanced_accuracy"] == pytest.approx(saved["length_balanced_accuracy"])


def test_student_mix_caps_synthetic_at_the_ratio():
    human = [{"prompt": f"h{i}", "chosen": "a", "rejected": "b"} for i in range(10)]
    synthetic = [{"prompt": f"s{i}", "chosen": "a", "rejected": "b", "margin": 1.0} for i in range(25)]
    pairs, mix = training.mix_pairs(human, synthetic, 1.0, seed=0)
    assert len(pairs) == 20 and mix["synthetic_pairs"] == 10 and mix["synthetic_per_human"] == 1.0
    pairs, mix = training.mix_pairs(human, synthetic[:4], 1.0, seed=0)
    assert len(pairs) == 14 and mix["synthetic_per_human"] == 0.4
    assert training.mix_pairs(human, synthetic, 1.0, seed=0)[0] == training.mix_pairs(human, synthetic, 1.0, seed=0)[0]


_TRAIN_SCRIPT = """
import json, logging, sys
from wofn import models, training
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
pairs = json.loads(open(sys.argv[1]).read())
config = training.TrainConfig(epochs=4, batch_size=8, learning_rate=1e-3, max_length=48, log_every=1, seed=1,
                              val_fraction=0.25)
training.train_reward_model(models.TINY_BERT, pairs, config, sys.argv[2], manifest={"role": "test"})
"""


def _train_in_a_process(pairs_file, out, kill_at_step: int | None = None) -> int:
    """Train in a child process; with `kill_at_step`, SIGKILL it once it logs that step."""
    child = subprocess.Popen([sys.executable, "-c", _TRAIN_SCRIPT, str(pairs_file), str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT)
    for line in child.stdout:
        if kill_at_step is not None and line.startswith(f"train step {kill_at_step}/"):
            child.send_signal(signal.SIGKILL)
            break
    child.stdout.close()
    return child.wait(timeout=300)


def test_a_killed_training_restarts_cleanly_and_publishes_nothing_half_written(tmp_path):
    """Issue 21: training SIGKILLed mid-run leaves the published model as it was (and no folder
    that blocks the next run); the rerun publishes what an uninterrupted training does, to the bit."""
    pairs_file = tmp_path / "pairs.json"
    pairs_file.write_text(json.dumps(make_toy_pairs(48, 0)))
    out = tmp_path / "models" / "rm"
    assert _train_in_a_process(pairs_file, out) == 0
    before = content_hash(out)

    assert _train_in_a_process(pairs_file, out, kill_at_step=5) == -signal.SIGKILL
    assert content_hash(out) == before, "the published model is untouched"
    assert sorted(p.name for p in out.parent.iterdir() if not p.name.startswith(".")) == ["rm"]
    assert models.load_reward_model(str(out)) is not None

    assert _train_in_a_process(pairs_file, out) == 0  # the rerun starts again and publishes
    assert sorted(p.name for p in out.parent.iterdir()) == ["rm"], "no staging folder is left"
    uninterrupted = tmp_path / "uninterrupted" / "rm"
    assert _train_in_a_process(pairs_file, uninterrupted) == 0
    assert (out / "model.safetensors").read_bytes() == (uninterrupted / "model.safetensors").read_bytes()


def test_micro_batches_train_the_same_model_as_whole_batches(tmp_path, monkeypatch):
    """rm_micro_batch splits each step's pairs into pieces whose gradients add up to the whole batch's:
    the same steps, the same pairs, the same weights up to float summation order (dropout off, the
    modules kept in eval mode: its masks are drawn per forward pass, so pieces would draw others)."""
    import torch

    train_mode = torch.nn.Module.train
    monkeypatch.setattr(torch.nn.Module, "train", lambda self, mode=True: train_mode(self, False))

    def train(name, **kw):
        config = training.TrainConfig(epochs=2, batch_size=8, learning_rate=1e-3, max_length=48, log_every=1,
                                      seed=3, **kw)
        metrics = training.train_reward_model(models.TINY_BERT, make_toy_pairs(32, 0), config, tmp_path / name,
                                              manifest={"role": "test"})
        return load_file(tmp_path / name / "model.safetensors"), [r["loss"] for r in metrics["history"]]

    (whole, whole_losses), (pieces, piece_losses) = train("whole"), train("pieces", micro_batch=3)  # 8 = 3 + 3 + 2
    assert whole.keys() == pieces.keys() and len(whole_losses) == len(piece_losses) == 8
    # every step's loss equal to float error (pieces weighted by size: unweighted ones drift by 5e-5 here)
    assert max(abs(a - b) for a, b in zip(whole_losses, piece_losses)) < 1e-6
    # AdamW turns float noise in near-zero gradients into up to lr-sized steps: compare the mean change
    mean_diff = sum((whole[k] - pieces[k]).abs().mean().item() for k in whole) / len(whole)
    assert mean_diff < 5e-5, mean_diff  # unweighted pieces: 2e-4
    with pytest.raises(ValueError, match="rm_micro_batch"):
        training.TrainConfig(micro_batch=0)


def test_validation_passes_respect_the_micro_batch(tmp_path, monkeypatch):
    """rm_micro_batch is set to fit memory: validation's forward passes (no backward) take at most
    twice as many pairs, not twice rm_batch_size."""
    forward, sizes = training._forward, {True: [], False: []}

    def recorded(model, tokenizer, objective, encoded, batch, *args):
        sizes[model.training].append(len(batch))
        return forward(model, tokenizer, objective, encoded, batch, *args)

    monkeypatch.setattr(training, "_forward", recorded)
    config = training.TrainConfig(epochs=1, batch_size=8, micro_batch=2, max_length=32, val_fraction=0.5, seed=1)
    training.train_reward_model(models.TINY_BERT, make_toy_pairs(40, 0), config, tmp_path / "rm",
                                manifest={"role": "test"})
    assert max(sizes[True]) == 2 and sizes[False], sizes
    assert max(sizes[False]) == 4 and sum(sizes[False]) % 20 == 0, sizes  # 20 validation pairs per pass
