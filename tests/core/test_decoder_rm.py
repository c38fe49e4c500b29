"""Decoder-only backbones as reward models: the pad token is set and the last real token is read."""

from __future__ import annotations

import pytest

from wofn import models, rm_format, scoring, training


@pytest.fixture(scope="module")
def decoder_rm():
    return models.load_reward_model(models.TINY_LLAMA)


def test_pad_token_is_set_on_tokenizer_and_model(decoder_rm):
    assert decoder_rm.model.config.model_type == "llama"
    assert decoder_rm.tokenizer.pad_token_id is not None
    assert decoder_rm.model.config.pad_token_id == decoder_rm.tokenizer.pad_token_id


def test_ensure_pad_token_falls_back_to_eos(decoder_rm):
    tokenizer = models.load_tokenizer(decoder_rm.path)
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    models.ensure_pad_token(tokenizer)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id


def test_padding_does_not_change_rewards(decoder_rm):
    """Right padding: a decoder RM reads the last non-pad token, so batching changes nothing."""
    prompts = ["\n\nHuman: hi\n\nAssistant:", "\n\nHuman: a much longer question about many things\n\nAssistant:"]
    responses = ["hello", "a considerably longer answer that goes on for a while"]
    batched = scoring.score(decoder_rm, prompts, responses, max_length=64)
    alone = [scoring.score(decoder_rm, [p], [r], max_length=64)[0] for p, r in zip(prompts, responses)]
    assert batched == pytest.approx(alone, abs=1e-5)
    ids = rm_format.encode(decoder_rm.tokenizer, prompts[0], responses[0], 64)
    assert decoder_rm.tokenizer.pad_token_id not in ids[-1:]


def test_decoder_backbone_trains(tmp_path):
    pairs = [{"prompt": "\n\nHuman: Q?\n\nAssistant:", "chosen": " yes, gladly", "rejected": " no way"}] * 16
    config = training.TrainConfig(epochs=6, batch_size=8, learning_rate=1e-3, max_length=32, val_fraction=0,
                                  log_every=1)
    metrics = training.train_reward_model(models.TINY_LLAMA, pairs, config, tmp_path / "rm")
    assert metrics["history"][-1]["loss"] < metrics["history"][0]["loss"]
    rm = models.load_reward_model(str(tmp_path / "rm"))
    assert rm.model.config.pad_token_id == rm.tokenizer.pad_token_id
    chosen, rejected = scoring.score(rm, [pairs[0]["prompt"]] * 2, [pairs[0]["chosen"], pairs[0]["rejected"]], 32)
    assert chosen > rejected
