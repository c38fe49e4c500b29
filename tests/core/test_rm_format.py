"""The reward model's input format keeps the response end when it truncates."""

from __future__ import annotations

from wofn import models, rm_format


def test_truncation_keeps_the_response_end():
    tokenizer = models.load_tokenizer(models.resolve(models.MINILM))
    prompt = "\n\nHuman: " + "very long question " * 200 + "\n\nAssistant:"
    ids = rm_format.encode(tokenizer, prompt, " the final answer is zebra", max_length=32)
    assert len(ids) == 32
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert text.endswith("the final answer is zebra")
    short = rm_format.encode(tokenizer, "\n\nHuman: hi\n\nAssistant:", "hello", max_length=32)
    assert len(short) < 32 and tokenizer.decode(short, skip_special_tokens=True).startswith("human : hi")


def test_rm_text_normalizes_the_join():
    assert rm_format.rm_text("\n\nHuman: a\n\nAssistant:", "  b ") == "\n\nHuman: a\n\nAssistant: b"


def test_collate_right_pads(tiny_rm):
    batch = rm_format.collate(tiny_rm.tokenizer, [[1, 2, 3], [4]])
    assert batch["input_ids"].tolist() == [[1, 2, 3],
                                           [4, tiny_rm.tokenizer.pad_token_id, tiny_rm.tokenizer.pad_token_id]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
