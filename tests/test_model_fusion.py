"""Fusion: features land at their placeholders, in order; counts are checked per sample."""

import pytest
import torch

from regionvlm.fusion import FusionError, fuse, ignore_placeholder_labels
from regionvlm.tokens import IGNORE_INDEX

IMG, REG, PAD = 90, 91, 0
D = 4


def _embeds(ids):
    # embedding of token t is [t, t, t, t] so untouched positions are recognisable
    return ids[..., None].float().expand(*ids.shape, D).clone()


def test_image_and_several_regions_per_sample_in_token_order():
    # sample 0: image (2 tokens) + mentions of regions 1, 0 (k=1); sample 1: no image, mention of region 2;
    # sample 2: image, no region
    ids = torch.tensor([[5, IMG, IMG, 6, REG, 7, REG, 8],
                        [5, 6, REG, 7, 8, 9, PAD, PAD],
                        [5, IMG, IMG, 6, 7, 8, 9, PAD]])
    image_features = torch.arange(3 * 2 * D).float().reshape(3, 2, D) + 100
    region_features = torch.arange(3 * D).float().reshape(3, 1, D) + 1000
    region_image_index = torch.tensor([0, 0, 1])
    mentions = torch.tensor([1, 0, 2])
    out = fuse(_embeds(ids), ids, IMG, image_features, REG, region_features, mentions, region_image_index)
    assert torch.equal(out[0, 1], image_features[0, 0]) and torch.equal(out[0, 2], image_features[0, 1])
    assert torch.equal(out[2, 1], image_features[2, 0]) and torch.equal(out[2, 2], image_features[2, 1])
    assert torch.equal(out[0, 4], region_features[1, 0])
    assert torch.equal(out[0, 6], region_features[0, 0])
    assert torch.equal(out[1, 2], region_features[2, 0])
    untouched = (ids != IMG) & (ids != REG)
    assert torch.equal(out[untouched], _embeds(ids)[untouched])


def test_k_tokens_per_region_and_repeated_mention():
    ids = torch.tensor([[REG, REG, 3, REG, REG]])
    region_features = torch.randn(1, 2, D)
    out = fuse(_embeds(ids), ids, IMG, torch.randn(1, 4, D), REG, region_features, torch.tensor([0, 0]),
               torch.tensor([0]))
    assert torch.equal(out[0, [0, 1]], region_features[0]) and torch.equal(out[0, [3, 4]], region_features[0])


def test_no_regions_in_batch():
    ids = torch.tensor([[IMG, 3], [4, 5]])
    out = fuse(_embeds(ids), ids, IMG, torch.ones(2, 1, D), REG, torch.zeros(0, 1, D),
               torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert torch.equal(out[0, 0], torch.ones(D)) and torch.equal(out[1], _embeds(ids)[1])


def test_gradient_reaches_features():
    ids = torch.tensor([[IMG, REG]])
    img = torch.randn(1, 1, D, requires_grad=True)
    reg = torch.randn(1, 1, D, requires_grad=True)
    fuse(_embeds(ids), ids, IMG, img, REG, reg, torch.tensor([0]), torch.tensor([0])).sum().backward()
    assert torch.equal(img.grad, torch.ones_like(img)) and torch.equal(reg.grad, torch.ones_like(reg))


def test_image_count_mismatch_names_sample_and_counts():
    ids = torch.tensor([[IMG, IMG, 3], [IMG, 3, 4]])
    with pytest.raises(FusionError, match=r"sample 1 \('b'\): 1 image placeholder tokens but the image has 2"):
        fuse(_embeds(ids), ids, IMG, torch.randn(2, 2, D), REG, torch.zeros(0, 1, D),
             torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), sample_ids=["a", "b"])


def test_region_count_mismatch_names_sample_and_counts():
    ids = torch.tensor([[REG, 3], [REG, REG]])
    with pytest.raises(FusionError, match=r"sample 1: 2 region placeholder tokens but 1 region mentions"):
        fuse(_embeds(ids), ids, IMG, None, REG, torch.randn(2, 1, D), torch.tensor([0, 1]), torch.tensor([0, 1]))
    with pytest.raises(FusionError, match="3 region placeholder tokens but 2 region mentions"):
        fuse(_embeds(ids), ids, IMG, None, REG, torch.randn(2, 1, D), torch.tensor([0, 1]))
    with pytest.raises(FusionError, match="not ordered"):
        ids2 = torch.tensor([[REG, 3], [REG, 4]])
        fuse(_embeds(ids2), ids2, IMG, None, REG, torch.randn(2, 1, D), torch.tensor([1, 0]), torch.tensor([0, 1]))


def test_placeholder_labels_are_ignored():
    ids = torch.tensor([[IMG, REG, 7, 8]])
    labels = torch.tensor([[IMG, REG, 7, 8]])
    assert ignore_placeholder_labels(labels, ids, (IMG, REG)).tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 7, 8]]
