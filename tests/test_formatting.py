import torch

from seer.core.formatting import encode, pad_batch, prompt_ids


def test_positions_come_from_the_chat_template(tokenizer):
    enc = encode(tokenizer, "what is a comet", "a ball of ice", "full")
    head = prompt_ids(tokenizer, "what is a comet")
    assert enc.input_ids[: len(head)] == head
    assert enc.user_end == len(head) - 1
    assert tokenizer.decode(enc.input_ids[: enc.user_end + 1]).endswith("<|im_start|>assistant\n")
    assert enc.last == len(enc.input_ids) - 1
    assert tokenizer.decode(enc.input_ids).endswith("a ball of ice<|im_end|>\n")


def test_modes(tokenizer):
    prompt_only = encode(tokenizer, "what is a comet", "a ball of ice", "prompt")
    assert prompt_only.input_ids == prompt_ids(tokenizer, "what is a comet")
    assert prompt_only.user_end == prompt_only.last
    response_only = encode(tokenizer, "what is a comet", "a ball of ice", "response")
    assert response_only.input_ids == prompt_ids(tokenizer, "a ball of ice")
    no_response = encode(tokenizer, "what is a comet", None, "full")
    assert no_response.input_ids == prompt_only.input_ids


def test_plain_concatenation_without_a_template(tokenizer):
    plain = tokenizer.__class__(
        tokenizer_object=tokenizer.backend_tokenizer, pad_token="<pad>", eos_token="<|im_end|>"
    )
    plain.chat_template = None
    enc = encode(plain, "what is a comet", "a ball of ice", "full")
    assert plain.decode(enc.input_ids) == "what is a comet\na ball of ice"
    assert plain.decode(enc.input_ids[: enc.user_end + 1]) == "what is a comet"


def test_truncation_keeps_the_prompt_and_flags_it(tokenizer):
    long = " ".join(["the quick brown fox"] * 50)
    enc = encode(tokenizer, "what is a comet", long, "full", max_length=40)
    assert enc.truncated and len(enc.input_ids) <= 40
    assert enc.input_ids[: enc.user_end + 1] == prompt_ids(tokenizer, "what is a comet")
    short = encode(tokenizer, "what is a comet", "ice", "full", max_length=40)
    assert not short.truncated


def test_pad_batch_right_pads_to_the_longest(tokenizer):
    a = encode(tokenizer, "what is a comet", "ice", "full")
    b = encode(tokenizer, "how far away is the moon and why", "far", "full")
    batch = pad_batch([a, b], ("user_end", "last"), tokenizer.pad_token_id)
    length = max(len(a.input_ids), len(b.input_ids))
    assert batch["input_ids"].shape == (2, length)
    assert batch["attention_mask"].sum(1).tolist() == [len(a.input_ids), len(b.input_ids)]
    assert batch["positions"].tolist() == [[a.user_end, a.last], [b.user_end, b.last]]
    assert (batch["input_ids"][0, len(a.input_ids) :] == tokenizer.pad_token_id).all()
    rounded = pad_batch([a, b], ("last",), tokenizer.pad_token_id, pad_to_multiple_of=64)
    assert rounded["input_ids"].shape[1] == 64
    assert torch.equal(rounded["attention_mask"].sum(1), batch["attention_mask"].sum(1))


def test_the_mean_span_starts_at_the_users_message(tokenizer):
    enc = encode(tokenizer, "what is a comet", "a ball of ice", "full")
    assert tokenizer.decode(enc.input_ids[: enc.start]).endswith("<|im_start|>user\n")
    assert tokenizer.decode(enc.input_ids[enc.start :]).startswith("what is a comet")
    assert enc.span_start("mean") == enc.start and enc.span_start("last") == enc.last
    assert enc.span_start("user_end") == enc.position("user_end") == enc.user_end
    # the same head in every form of the text: the prompt alone, the response alone
    for mode in ("prompt", "response"):
        assert encode(tokenizer, "what is a comet", "a ball of ice", mode).start == enc.start
    batch = pad_batch([enc], ("user_end", "mean"), tokenizer.pad_token_id)
    assert batch["starts"].tolist() == [[enc.user_end, enc.start]]
    assert batch["positions"].tolist() == [[enc.user_end, enc.last]]
