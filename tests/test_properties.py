"""Property-based tests (hypothesis): arbitrary region input is a `DataError`/`UserError` or a valid region, never a
crash; region conversions agree; the collator's truncation never cuts a placeholder and labels only answers; fusion
writes exactly the features at exactly the placeholders."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regionvlm.data.structures import Regions
from regionvlm.errors import DataError, UserError
from regionvlm.fusion import FusionError, fuse
from regionvlm.tokens import IGNORE_INDEX

TOK_DIR = Path(__file__).resolve().parents[1] / "projects/rgpt/tiny/tokenizer"
H, W = 24, 32
SCALARS = st.none() | st.booleans() | st.integers(-50, 80) | st.floats(allow_nan=True) | st.text(max_size=4)
JSONISH = SCALARS | st.lists(SCALARS, max_size=6) | st.dictionaries(st.sampled_from(["size", "counts", "x"]), SCALARS,
                                                                    max_size=2)
REGION_DICTS = st.one_of(
    st.fixed_dictionaries({"bbox": st.lists(st.floats(-10, 60, allow_nan=False) | st.integers(-10, 60), max_size=5)}),
    st.fixed_dictionaries({"bbox_xyxy": JSONISH}),
    st.fixed_dictionaries({"segmentation": st.lists(st.lists(st.floats(-5, 40) | st.integers(-5, 40), max_size=8),
                                                    max_size=2)}),
    st.fixed_dictionaries({"rle": st.fixed_dictionaries({"size": st.lists(st.integers(0, 40), max_size=3),
                                                         "counts": st.lists(st.integers(0, 800), max_size=4)})}),
    st.dictionaries(st.sampled_from(["bbox", "segmentation", "rle", "mask", "other"]), JSONISH, max_size=2),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(REGION_DICTS, max_size=3))
def test_any_region_dicts_give_valid_regions_or_one_data_error(dicts):
    try:
        regions = Regions.from_dicts(dicts, where="f.jsonl:1: regions").with_image_size(H, W)
    except DataError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("f.jsonl:1: regions")
        return
    masks, boxes = regions.to_masks(), regions.to_boxes()
    assert masks.shape == (len(dicts), H, W) and boxes.shape == (len(dicts), 4)
    assert all(m.any() for m in masks)                         # no empty region gets through
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= W).all() and (boxes[:, 3] <= H).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30) | st.builds(lambda k, v: f"{k}:{v}", st.sampled_from(["box", "polygon", "mask", "rle"]),
                                        st.text(alphabet="0123456789,.-e ", max_size=20)))
def test_any_region_flag_parses_or_is_one_user_error(spec):
    from regionvlm.commands.predict import parse_region

    try:
        parse_region(spec, "--region[0]")
    except UserError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("--region[0]")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, H - 1), st.integers(0, W - 1), st.integers(1, 8), st.integers(1, 8)),
                min_size=1, max_size=4), st.integers(0, 2**31 - 1))
def test_mask_rle_box_conversions_agree(rects, seed):
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    masks = []
    for y, x, h, w in rects:                                     # a rectangle with random holes, never empty
        m = np.zeros((H, W), bool)
        m[y:y + h, x:x + w] = rng.random((min(h, H - y), min(w, W - x))) < 0.7
        m[y, x] = True
        masks.append(m)
    regions = Regions([("mask", m) for m in masks], (H, W))
    decoded = np.stack([mask_utils.decode(r).astype(bool) for r in regions.to_rles()])
    assert np.array_equal(decoded, np.stack(masks))
    via_rle = Regions([("rle", r) for r in regions.to_rles()], (H, W))
    assert np.array_equal(via_rle.to_masks().astype(bool), np.stack(masks))
    for m, box in zip(masks, regions.to_boxes()):
        ys, xs = np.nonzero(m)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


# -- collator ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOK_DIR))


WORDS = st.sampled_from(["what", " is", " the", " colour", " of", " left", " and", "?", " shape"])


@st.composite
def samples(draw):
    n = draw(st.integers(0, 3))
    turns = []
    for t in range(draw(st.integers(1, 3))):
        parts = ["<image>\n"] if t == 0 else []
        for _ in range(draw(st.integers(0, 6))):
            parts.append(f"<region{draw(st.integers(1, n))}>" if n and draw(st.booleans()) else draw(WORDS))
        turns += [{"from": "human", "value": "".join(parts)},
                  {"from": "gpt", "value": " ".join(draw(st.lists(st.sampled_from(["red circle", "no", "Region [2]."]),
                                                                    min_size=1, max_size=4)))}]
    return turns, n


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(samples(), min_size=1, max_size=4), st.integers(1, 3), st.integers(8, 90))
def test_truncation_keeps_placeholders_whole_and_labels_only_answers(tok, batch, k, max_length):
    from regionvlm.data.collate import Collator

    c = Collator(tok, num_image_tokens=4, tokens_per_region=k, template="plain", max_length=max_length)
    raw = [{"id": f"s{i}", "conversations": conv, "pixel_values": torch.zeros(3, 4, 4),
            "region_masks": torch.ones(n, 4, 4), "region_boxes": torch.zeros(n, 4)} for i, (conv, n) in enumerate(batch)]
    b = c(raw)
    assert len(b) + c.num_dropped == len(batch)
    assert b.input_ids.shape[1] <= max_length if len(b) else True
    for row, sid in enumerate(b.ids):
        conv, n = batch[int(sid[1:])]
        ids, labels = b.input_ids[row], b.labels[row]
        kept = int(b.attention_mask[row].sum())
        n_image, n_region = int((ids == c.image_token_id).sum()), int((ids == c.region_token_id).sum())
        assert n_image == 4                                    # the image placeholder is never cut
        assert n_region % k == 0                               # nor a region's k tokens
        asked = "".join(t["value"] for t in conv if t["from"] == "human")
        assert n_region // k <= len(re.findall(r"<region\d+>", asked))
        assert not ((labels == c.image_token_id) | (labels == c.region_token_id)).any()
        labelled = labels[labels != IGNORE_INDEX].tolist()
        answers = sum((tok(a["value"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                       for a in conv if a["from"] == "gpt"), [])
        assert labelled == answers[:len(labelled)]             # only answer tokens, in order
        assert kept <= max_length
    assert len(b.region_mentions) == int((b.input_ids == c.region_token_id).sum()) // k


# -- fusion ------------------------------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(st.integers(1, 3), st.integers(1, 2), st.integers(0, 2**31 - 1))
def test_fusion_writes_the_features_at_the_placeholders_and_nothing_else(b, k, seed):
    g = torch.Generator().manual_seed(seed)
    IMG, REG, N, D, L = 1, 2, 3, 5, 24
    ids = torch.randint(3, 50, (b, L), generator=g)
    mentions, regions_of = [], []
    for i in range(b):
        ids[i, 1:1 + N] = IMG
        m = int(torch.randint(0, 4, (1,), generator=g))
        slots = torch.randperm(L - 1 - N, generator=g)[:m].sort().values + 1 + N
        n_regions = int(torch.randint(1, 3, (1,), generator=g))
        for s in slots.tolist()[: (L - 1 - N) // k]:
            if s + k <= L and not (ids[i, s:s + k] == REG).any():
                ids[i, s:s + k] = REG
                mentions.append(len(regions_of) + int(torch.randint(0, n_regions, (1,), generator=g)))
        regions_of += [i] * n_regions
    # a slot's k tokens can run into the next: recount the mentions from the tokens, as the collator makes them
    per_sample = [(ids[i] == REG).sum().item() for i in range(b)]
    if any(c % k for c in per_sample):
        return
    embeds = torch.randn(b, L, D, generator=g)
    image_features = torch.randn(b, N, D, generator=g)
    region_features = torch.randn(len(regions_of), k, D, generator=g)
    order = sorted(range(len(mentions)), key=lambda j: regions_of[mentions[j]])
    mentions = torch.tensor([mentions[j] for j in order], dtype=torch.long)
    if [c // k for c in per_sample] != [sum(1 for m in mentions.tolist() if regions_of[m] == i) for i in range(b)]:
        return
    out = fuse(embeds, ids, IMG, image_features, REG, region_features, mentions,
               torch.tensor(regions_of), sample_ids=[f"s{i}" for i in range(b)])
    other = (ids != IMG) & (ids != REG)
    assert torch.equal(out[other], embeds[other])
    assert torch.equal(out[ids == IMG].reshape(b, N, D), image_features)
    assert torch.equal(out[ids == REG], region_features[mentions].reshape(-1, D))
    with pytest.raises(FusionError):
        fuse(embeds, ids, IMG, image_features[:, :-1], REG, region_features, mentions, torch.tensor(regions_of))
