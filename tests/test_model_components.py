"""Region extractors against naive per-region loops, refiner shapes, projectors, the lm head."""

import math

import pytest
import torch
from torch.nn import functional as F
from torchvision.ops import roi_align

from regionvlm.registry import FEATURE_REFINERS, HEADS, PROJECTORS, REGION_EXTRACTORS
from regionvlm.tokens import IGNORE_INDEX


def _regions(seed=0, b=3, r=7, s=32):
    g = torch.Generator().manual_seed(seed)
    image_index = torch.tensor([2, 0, 0, 2, 1, 2, 0])[:r]
    boxes = []
    masks = torch.zeros(r, s, s)
    for i in range(r):
        x1, y1 = torch.randint(0, s // 2, (2,), generator=g).tolist()
        x2, y2 = x1 + torch.randint(3, s // 2, (1,), generator=g).item(), y1 + torch.randint(3, s // 2, (1,), generator=g).item()
        masks[i, y1:y2, x1:x2] = (torch.rand(y2 - y1, x2 - x1, generator=g) > 0.3).float()
        boxes.append([x1, y1, x2, y2])
    return masks, torch.tensor(boxes, dtype=torch.float), image_index


def test_mask_pool_equals_naive_loop():
    feats = torch.randn(3, 5, 8, 8)
    masks, boxes, idx = _regions()
    ext = REGION_EXTRACTORS.build({"type": "mask_pool"}, in_channels=5, image_size=32)
    out = ext(feats, masks, boxes, idx)
    assert out.shape == (7, 1, 5) and ext.tokens_per_region == 1
    for r in range(7):  # naive reference: area-resize this mask, weighted mean over this image's map
        m = F.adaptive_avg_pool2d(masks[r][None, None], (8, 8))[0, 0]
        ref = (feats[idx[r]] * m).sum((1, 2)) / m.sum()
        torch.testing.assert_close(out[r, 0], ref, rtol=1e-5, atol=1e-5)


def test_mask_pool_bilinear_equals_naive_loop():
    feats = torch.randn(3, 5, 16, 16)
    masks, boxes, idx = _regions(seed=1, s=24)
    out = REGION_EXTRACTORS.build({"type": "mask_pool", "mask_resize": "bilinear"}, in_channels=5)(feats, masks, boxes, idx)
    for r in range(7):
        m = F.interpolate(masks[r][None, None], size=(16, 16), mode="bilinear", align_corners=False)[0, 0]
        torch.testing.assert_close(out[r, 0], (feats[idx[r]] * m).sum((1, 2)) / m.sum(), rtol=1e-5, atol=1e-5)


def test_vanished_mask_takes_box_centre_feature_and_stays_finite():
    feats = torch.randn(1, 4, 4, 4, requires_grad=True)
    masks = torch.zeros(2, 64, 64)
    masks[0, 40, 9] = 1.0                    # one pixel: vanishes under bilinear resizing to 4×4
    boxes = torch.tensor([[9.0, 40.0, 10.0, 41.0], [0.0, 0.0, 0.0, 0.0]])  # second: empty mask, empty box
    ext = REGION_EXTRACTORS.build({"type": "mask_pool", "mask_resize": "bilinear"}, in_channels=4)
    out = ext(feats, masks, boxes, torch.tensor([0, 0]))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 0], feats[0, :, 2, 0])   # centre (9.5, 40.5) px → cell (row 2, col 0)
    torch.testing.assert_close(out[1, 0], feats[0, :, 0, 0])
    out.sum().backward()
    assert torch.isfinite(feats.grad).all()
    # a tiny mask under area resizing keeps its (small) weight: the result is the covering cell's feature
    area = REGION_EXTRACTORS.build({"type": "mask_pool"}, in_channels=4)(feats, masks, boxes, torch.tensor([0, 0]))
    torch.testing.assert_close(area[0, 0], feats[0, :, 2, 0])


def test_mask_pool_no_regions():
    ext = REGION_EXTRACTORS.build({"type": "mask_pool", "geometry": "token"}, in_channels=4)
    out = ext(torch.randn(2, 4, 4, 4), torch.zeros(0, 16, 16), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert out.shape == (0, 2, 4)


@pytest.mark.parametrize("mode", ["add", "token"])
def test_mask_geometry_embedding_matches_loop(mode):
    torch.manual_seed(0)
    feats = torch.randn(3, 6, 8, 8)
    masks, boxes, idx = _regions(seed=2)
    ext = REGION_EXTRACTORS.build({"type": "mask_pool", "geometry": mode, "geometry_size": 4, "geometry_hidden": 8},
                                  in_channels=6)
    plain = REGION_EXTRACTORS.build({"type": "mask_pool"}, in_channels=6)(feats, masks, boxes, idx)
    out = ext(feats, masks, boxes, idx)
    assert ext.tokens_per_region == (2 if mode == "token" else 1) and ext.out_channels == 6
    for r in range(7):  # reference: crop this mask to its box with roi_align on its own, then the MLP
        crop = roi_align(masks[r][None, None], [boxes[r][None]], output_size=4, spatial_scale=1.0,
                         sampling_ratio=0, aligned=True).flatten()
        geo = ext.geometry_mlp(crop)
        if mode == "add":
            torch.testing.assert_close(out[r, 0], plain[r, 0] + geo, rtol=1e-5, atol=1e-5)
        else:
            torch.testing.assert_close(out[r, 0], plain[r, 0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out[r, 1], geo, rtol=1e-5, atol=1e-5)
    # the geometry input tells shapes apart: a full box vs a disc inside the same box
    disc = torch.zeros(2, 32, 32)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    disc[0, 8:24, 8:24] = 1
    disc[1] = (((yy - 15.5) ** 2 + (xx - 15.5) ** 2) <= 64).float()
    from regionvlm.plugins.regions import mask_geometry

    g = mask_geometry(disc, torch.tensor([[8.0, 8, 24, 24]] * 2), 4)
    assert g[0].min() == 1 and g[1][0] < 0.5 and g[1][5] == 1  # square fills its box; disc misses the corners


def test_roi_align_equals_naive_loop():
    feats = torch.randn(3, 5, 8, 8)
    masks, boxes, idx = _regions()
    for pool, k, c in (("mean", 1, 5), ("tokens", 4, 5), ("flatten", 1, 20)):
        ext = REGION_EXTRACTORS.build({"type": "roi_align", "output_size": 2, "pool": pool}, in_channels=5,
                                      image_size=32)
        out = ext(feats, masks, boxes, idx)
        assert out.shape == (7, k, c) and (ext.tokens_per_region, ext.out_channels) == (k, c)
        for r in range(7):
            crop = roi_align(feats[idx[r]][None], [boxes[r][None]], output_size=2, spatial_scale=8 / 32,
                             sampling_ratio=2, aligned=True)[0]  # C×2×2
            ref = {"mean": crop.mean((1, 2))[None], "tokens": crop.flatten(1).T, "flatten": crop.flatten()[None]}[pool]
            torch.testing.assert_close(out[r], ref, rtol=1e-5, atol=1e-5)


def test_zero_extractor():
    out = REGION_EXTRACTORS.build({"type": "zero"}, in_channels=3)(torch.randn(1, 3, 4, 4), torch.ones(2, 8, 8),
                                                                   torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    assert torch.equal(out, torch.zeros(2, 1, 3))


def test_rgpt_deconv_shape_and_layers():
    ref = FEATURE_REFINERS.build({"type": "rgpt_deconv"}, in_channels=8)
    assert (ref.out_channels, ref.scale) == (8, 4)
    assert ref(torch.randn(2, 8, 6, 6)).shape == (2, 8, 24, 24)
    kinds = [type(m).__name__ for m in ref.layers]
    assert kinds == ["ConvTranspose2d", "LayerNorm2d", "GELU", "ConvTranspose2d", "GELU"]
    ref3 = FEATURE_REFINERS.build({"type": "rgpt_deconv", "stages": 3, "width": 4}, in_channels=8)
    assert ref3(torch.randn(1, 8, 3, 5)).shape == (1, 4, 24, 40) and ref3.scale == 8
    ident = FEATURE_REFINERS.build({"type": "identity"}, in_channels=8)
    x = torch.randn(1, 8, 3, 3)
    assert ident(x) is x and ident.out_channels == 8


def test_projectors():
    p = PROJECTORS.build({"type": "mlp2x_gelu"}, in_channels=6, out_channels=10)
    assert [type(m).__name__ for m in p.layers] == ["Linear", "GELU", "Linear"]
    assert p(torch.randn(3, 2, 6)).shape == (3, 2, 10)
    p3 = PROJECTORS.build({"type": "mlp", "depth": 3, "hidden_channels": 7}, in_channels=6, out_channels=10)
    assert [m.out_features for m in p3.layers if hasattr(m, "out_features")] == [7, 7, 10]
    lin = PROJECTORS.build({"type": "linear"}, in_channels=6, out_channels=10)
    x = torch.randn(4, 6)
    torch.testing.assert_close(lin(x), x @ lin.proj.weight.T + lin.proj.bias)


def test_lm_head_scores_shifted_answer_tokens_only():
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 1], [IGNORE_INDEX, 2, IGNORE_INDEX, IGNORE_INDEX]])
    out = HEADS.build({"type": "lm"})(logits, labels)
    lp = logits.log_softmax(-1)
    ref = -(lp[0, 1, 3] + lp[0, 2, 1] + lp[1, 0, 2]) / 3
    torch.testing.assert_close(out["loss"], ref)
    assert int(out["num_tokens"]) == 3
    none = HEADS.build({"type": "lm"})(logits, torch.full((2, 4), IGNORE_INDEX))
    assert none["loss"].item() == 0 and not math.isnan(none["loss"].item())


class _Lying(torch.nn.Module):
    """A region extractor whose declarations disagree with what its forward returns (a plugin bug)."""

    def __init__(self, in_channels: int, declared_channels: int = 7, declared_tokens: int = 1, tokens: int = 1):
        super().__init__()
        self.out_channels, self.tokens_per_region, self.tokens = declared_channels, declared_tokens, tokens

    def forward(self, features, masks, boxes, image_index):
        pooled = features.mean((2, 3))[:, None].expand(-1, self.tokens, -1)
        return pooled.expand(masks.shape[0], -1, -1)


@pytest.fixture
def lying_extractor():
    """Registered for one test only: other tests print the list of known extractors."""
    REGION_EXTRACTORS.register("test_lying_extractor")(_Lying)
    yield
    REGION_EXTRACTORS._items.pop("test_lying_extractor")


@pytest.mark.parametrize("settings, fragment", [
    ({"declared_channels": 7}, "declares out_channels 7 but its forward gives 32"),
    ({"declared_channels": 32, "declared_tokens": 1, "tokens": 2}, "declares tokens_per_region 1 but its forward"),
])
def test_a_component_that_breaks_its_declarations_is_named_where_it_is_built(settings, fragment, lying_extractor):
    """Found at build time, with the key path and the component (it got a share_projector hint, then 'mat1 and
    mat2 shapes cannot be multiplied' or a fusion error naming no component at step 1)."""
    from conftest import tiny_training_config

    from regionvlm.engine.build import build_model_and_tokenizer
    from regionvlm.errors import PluginError

    model_cfg = tiny_training_config()["model"]
    model_cfg["feature_refiner"] = {"type": "identity"}
    model_cfg["vision_encoder"]["config"]["hidden_size"] = 32
    model_cfg["region_extractor"] = {"type": "test_lying_extractor", **settings}
    with pytest.raises(PluginError, match=rf"^model.region_extractor: _Lying \(.*:_Lying\) breaks its contract "
                                          rf"\(regionvlm.contracts\): {fragment}"):
        build_model_and_tokenizer(model_cfg)
