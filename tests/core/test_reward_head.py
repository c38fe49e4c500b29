"""Reward heads: pooled heads read rewards the same way in training, the saved folder and scoring."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import make_toy_pairs

from wofn import evaluation, models, reward_head, rm_format, scoring, training


def _rewards_one_by_one(rm, texts):
    out = []
    for text in texts:
        ids = torch.tensor([rm.tokenizer(text)["input_ids"]])
        with torch.inference_mode():
            out.append(float(rm.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, 0]))
    return out


@pytest.mark.parametrize("spec, pooling", [(models.TINY_BERT, "mean"), (models.TINY_LLAMA, "last")])
def test_pooled_rewards_do_not_depend_on_padding(spec, pooling):
    """Batched (right-padded, mixed lengths) and one-at-a-time rewards agree: padding is never pooled."""
    rm = models.load_reward_model(spec, head=pooling)
    assert isinstance(rm.model, reward_head.PooledRewardModel) and rm.model.pooling == pooling
    prompts = ["\n\nHuman: hi\n\nAssistant:", "\n\nHuman: tell me a long story about bread\n\nAssistant:"]
    responses = [" ok", " Once upon a time there was a loaf of bread that rose and rose."]
    batched = scoring.score(rm, prompts, responses, max_length=64, share_prefix=False)
    alone = _rewards_one_by_one(rm, [rm_format.rm_text(p, r) for p, r in zip(prompts, responses)])
    assert batched == pytest.approx(alone, abs=1e-5)


def test_auto_head_is_mean_for_the_shipped_sentence_transformer_and_hf_otherwise():
    assert reward_head.resolve_head("auto", models.resolve(models.MINILM)) == "mean"
    assert reward_head.resolve_head("auto", models.resolve(models.TINY_BERT)) == "hf"
    assert reward_head.resolve_head("auto", models.resolve(models.TINY_LLAMA)) == "hf"  # decoders: last token
    assert reward_head.resolve_head("auto", "some-org/some-hub-model") == "hf"
    with pytest.raises(ValueError, match="reward head 'max'"):
        reward_head.resolve_head("max", models.resolve(models.TINY_BERT))


def test_trained_mean_head_is_stored_and_every_loader_reads_it(tmp_path):
    config = training.TrainConfig(epochs=6, batch_size=8, learning_rate=1e-3, max_length=48, seed=1,
                                  val_fraction=0, head="mean")
    out = tmp_path / "rm"
    training.train_reward_model(models.TINY_BERT, make_toy_pairs(48, 0), config, out)
    assert json.loads((out / reward_head.HEAD_CONFIG).read_text()) == {"pooling": "mean"}
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors", "reward_head.safetensors"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["head"] == "mean" and manifest["train_config"]["head"] == "mean"
    # the revision covers the head's weights too
    assert manifest["revision"] == models.revision(str(out)) and manifest["revision"].count("-") == 1

    rm = models.load_reward_model(str(out))  # no head named: the folder's
    assert isinstance(rm.model, reward_head.PooledRewardModel) and rm.model.pooling == "mean"
    head = rm.model.score.weight.detach().clone()
    assert head.abs().sum() > 0
    again = models.load_reward_model(str(out), head="auto")
    assert torch.equal(again.model.score.weight, head)
    result = evaluation.evaluate(str(out), make_toy_pairs(40, 1))
    assert result["accuracy"] >= 0.9  # the stored head is loaded, not a fresh random one
    with pytest.raises(ValueError, match="trained with the 'mean' head"):
        models.load_reward_model(str(out), head="hf")

    # a student continuing from this teacher keeps its head
    student = tmp_path / "student"
    training.train_reward_model(str(out), make_toy_pairs(16, 2), training.TrainConfig(
        epochs=1, batch_size=8, max_length=48, val_fraction=0), student)
    assert json.loads((student / reward_head.HEAD_CONFIG).read_text()) == {"pooling": "mean"}


def test_a_folder_from_before_heads_still_loads_with_its_own_head(tmp_path):
    """Folders written before heads were a setting have transformers' head and no reward_head.json."""
    out = tmp_path / "old"
    config = training.TrainConfig(epochs=1, batch_size=8, max_length=48, val_fraction=0, head="hf")
    training.train_reward_model(models.TINY_BERT, make_toy_pairs(16, 0), config, out)
    assert not (out / reward_head.HEAD_CONFIG).exists()
    rm = models.load_reward_model(str(out), head="auto")
    assert not isinstance(rm.model, reward_head.PooledRewardModel)
    with pytest.raises(ValueError, match="trained with the 'hf' head"):
        models.load_reward_model(str(out), head="mean")


def test_missing_head_weights_are_named(tmp_path):
    out = tmp_path / "rm"
    config = training.TrainConfig(epochs=1, batch_size=8, max_length=48, val_fraction=0, head="mean")
    training.train_reward_model(models.TINY_BERT, make_toy_pairs(16, 0), config, out)
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / reward_head.HEAD_WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match="reward_head.safetensors is missing"):
        models.load_reward_model(str(broken))
    (broken / reward_head.HEAD_CONFIG).write_text('{"pooling": "max"}')
    with pytest.raises(ValueError, match="pooling 'max'"):
        models.load_reward_model(str(broken))


def test_train_config_refuses_an_unknown_head():
    with pytest.raises(ValueError, match="TrainConfig.head"):
        training.TrainConfig(head="cls")
