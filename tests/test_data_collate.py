"""Collator: exact tokens and labels, placeholders, truncation, generation mode, property tests."""

import copy
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from regionvlm.data.collate import Collator
from regionvlm.errors import DataError
from regionvlm.text.templates import VICUNA_SYSTEM
from regionvlm.tokens import IGNORE_INDEX

TOK_DIR = Path(__file__).resolve().parents[1] / "projects/rgpt/tiny/tokenizer"
S = 8


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(TOK_DIR))


def sample(conv, n_regions=0, sid="s"):
    return {"id": sid, "conversations": conv, "pixel_values": torch.zeros(3, S, S),
            "region_masks": torch.ones(n_regions, S, S), "region_boxes": torch.zeros(n_regions, 4)}


CONV = [{"from": "human", "value": "<image>\nWhat is <region2>?"}, {"from": "gpt", "value": "red circle"},
        {"from": "human", "value": "And <region1> left of <region2>?"}, {"from": "gpt", "value": "blue square"}]


def enc(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_vicuna_multiturn_exact_tokens_and_labels(tok):
    c = Collator(tok, num_image_tokens=3, tokens_per_region=2)
    b = c([sample(CONV, 2)])
    I, R, eos = c.image_token_id, c.region_token_id, tok.eos_token_id
    a1, a2 = enc(tok, " red circle"), enc(tok, " blue square")
    expect = ([tok.bos_token_id] + enc(tok, VICUNA_SYSTEM + " USER: ") + [I] * 3 + enc(tok, "\nWhat is ") + [R] * 2
              + enc(tok, "? ASSISTANT:") + a1 + [eos] + enc(tok, "USER: And ") + [R] * 2 + enc(tok, " left of ")
              + [R] * 2 + enc(tok, "? ASSISTANT:") + a2 + [eos])
    assert b.input_ids[0].tolist() == expect
    labels = b.labels[0].tolist()
    answer_pos = [i for i, v in enumerate(labels) if v != IGNORE_INDEX]
    p1 = expect.index(a1[0], len(enc(tok, VICUNA_SYSTEM)))
    p2 = len(expect) - len(a2) - 1
    assert answer_pos == list(range(p1, p1 + len(a1) + 1)) + list(range(p2, p2 + len(a2) + 1))
    assert [labels[i] for i in answer_pos] == a1 + [eos] + a2 + [eos]
    assert b.region_mentions.tolist() == [1, 0, 1] and b.region_image_index.tolist() == [0, 0]
    assert b.attention_mask.sum() == len(expect)
    assert c.prompt_text(CONV).startswith(VICUNA_SYSTEM + " USER: <image>\nWhat is <region2>? ASSISTANT: red circle</s>USER:")


def test_batch_padding_mentions_across_samples(tok):
    c = Collator(tok, num_image_tokens=2, tokens_per_region=1, template="plain")
    short = sample([{"from": "human", "value": "<image><region1>"}, {"from": "gpt", "value": "a"}], 1, "x")
    long = sample(CONV, 3, "y")
    b = c([short, long])
    assert b.input_ids.shape[0] == 2 and b.ids == ["x", "y"]
    n = int(b.attention_mask[0].sum())
    assert b.attention_mask[0, :n].all() and not b.attention_mask[0, n:].any()  # right padding
    assert (b.input_ids[0, n:] == tok.pad_token_id).all() and (b.labels[0, n:] == IGNORE_INDEX).all()
    assert b.region_mentions.tolist() == [0, 2, 1, 2]  # second sample's regions start at 1
    assert b.region_image_index.tolist() == [0, 1, 1, 1] and b.region_masks.shape == (4, S, S)


def test_generation_mode(tok):
    c = Collator(tok, num_image_tokens=2, tokens_per_region=1, for_generation=True)
    s1 = sample(CONV, 2, "a")
    s2 = dict(sample(CONV[:2], 2, "b"), target={"label": "x"})
    b = c([s1, s2])
    assert b.labels is None and b.targets == ["blue square", {"label": "x"}]
    assert b.attention_mask[:, -1].all()  # left padding: every prompt ends at the right edge
    cue = enc(tok, "? ASSISTANT:")
    for row in b.input_ids:
        assert row[-len(cue):].tolist() == cue
    full = tok.decode(b.input_ids[0][b.attention_mask[0].bool()])
    assert "red circle</s>USER: And" in full and "blue square" not in full


def test_truncation_never_cuts_a_placeholder(tok):
    c = Collator(tok, num_image_tokens=20, tokens_per_region=4, template="plain", max_length=30)
    ok = sample([{"from": "human", "value": "<image><region1>"}, {"from": "gpt", "value": "red circle " * 20}], 1, "ok")
    late = sample([{"from": "human", "value": "<image>\n" + "word " * 10 + "<region1>"},
                   {"from": "gpt", "value": "x"}], 1, "late")
    b = c([ok, late])
    assert c.num_dropped == 1 and b.ids == ["ok"] and b.input_ids.shape == (1, 30)
    assert (b.input_ids == c.region_token_id).sum() == 4 and b.region_masks.shape[0] == 1
    assert (b.labels != IGNORE_INDEX).any()
    empty = c([late])  # everything dropped: an empty batch, not a crash
    assert len(empty) == 0 and c.num_dropped == 2
    assert empty.pixel_values.shape == (0, 3, S, S) and empty.region_masks.shape == (0, S, S)
    assert empty.input_ids.shape[0] == 0 and empty.region_mentions.numel() == 0


def test_bad_region_reference(tok):
    c = Collator(tok, num_image_tokens=1)
    with pytest.raises(DataError, match="sample bad: <region3> but the sample has 2 regions"):
        c([sample([{"from": "human", "value": "<region3>"}, {"from": "gpt", "value": "x"}], 2, "bad")])


def test_tokenizer_chat_template(tok):
    t = copy.deepcopy(tok)
    t.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                       "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    c = Collator(t, num_image_tokens=1, template="chat_template")
    b = c([sample(CONV, 2)])
    labelled = b.labels[0][b.labels[0] != IGNORE_INDEX].tolist()
    assert t.decode(labelled) == "red circle</s>blue square</s>"
    g = Collator(t, num_image_tokens=1, template="chat_template", for_generation=True)([sample(CONV, 2)])
    assert t.decode(g.input_ids[0]).endswith("And <region_feat> left of <region_feat>?</s><|assistant|>")


WORDS = st.sampled_from(["red", "circle", " the", "left of", "?", "\n", "blue square", "é", ""])


@st.composite
def conversations(draw):
    n_regions = draw(st.integers(0, 4))
    turns, answers = [], []
    for t in range(draw(st.integers(1, 3))):
        parts = ["<image>\n"] if t == 0 and draw(st.booleans()) else []
        for _ in range(draw(st.integers(0, 4))):
            if n_regions and draw(st.booleans()):
                parts.append(f"<region{draw(st.integers(1, n_regions))}>")
            else:
                parts.append(draw(WORDS))
        answer = draw(st.lists(st.sampled_from(["yes", "no", "red circle", "Region [2]."]), min_size=1, max_size=3))
        turns += [{"from": "human", "value": "".join(parts)}, {"from": "gpt", "value": " ".join(answer)}]
        answers.append(" ".join(answer))
    return turns, n_regions, answers


@settings(max_examples=60, deadline=None)
@given(st.lists(conversations(), min_size=1, max_size=3), st.integers(1, 3), st.sampled_from(["vicuna_v1", "plain"]))
def test_property_placeholders_mentions_labels(tok, batch, k, template):
    c = Collator(tok, num_image_tokens=3, tokens_per_region=k, template=template, max_length=None)
    samples = [sample(conv, n, f"s{i}") for i, (conv, n, _) in enumerate(batch)]
    b = c(samples)
    offset = 0
    for i, (conv, n, answers) in enumerate(batch):
        text = "".join(t["value"] for t in conv if t["from"] == "human")
        mentions = [int(m) for m in __import__("re").findall(r"<region(\d+)>", text)]
        assert (b.input_ids[i] == c.region_token_id).sum() == k * len(mentions)
        assert (b.input_ids[i] == c.image_token_id).sum() == 3 * text.count("<image>")
        labels = b.labels[i]
        assert not ((labels == c.region_token_id) | (labels == c.image_token_id)).any()
        labelled = labels[labels != IGNORE_INDEX].tolist()
        expect = sum((enc(tok, (" " if template == "vicuna_v1" else "") + a) + [tok.eos_token_id] for a in answers), [])
        assert labelled == expect
        got = b.region_mentions[(b.region_mentions >= offset) & (b.region_mentions < offset + n)] - offset
        assert got.tolist() == [m - 1 for m in mentions]
        offset += n
    assert len(b.region_mentions) == sum(len(__import__("re").findall(r"<region\d+>", "".join(
        t["value"] for t in conv))) for conv, _, _ in batch)
    assert b.region_image_index.tolist() == sum(([i] * n for i, (_, n, _) in enumerate(batch)), [])
