"""Regions: conversions equal pycocotools, validation errors, transforms aligned with the image."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from regionvlm.data.geometry import mask_to_rle
from regionvlm.data.processing import ImageProcessor, load_image
from regionvlm.data.structures import Regions
from regionvlm.errors import DataError

H, W = 30, 40
POLY = [[5.5, 3.0, 25.0, 4.0, 20.0, 22.5, 6.0, 18.0]]


def ref_mask(seg, h=H, w=W):
    rles = mask_utils.frPyObjects(seg, h, w)
    return mask_utils.decode(mask_utils.merge(rles) if isinstance(rles, list) else rles).astype(bool)


def test_polygon_rle_box_masks_equal_pycocotools():
    blob = np.zeros((H, W), bool)
    blob[4:12, 30:37] = True
    blob[20:25, 2:8] = True
    rle = mask_to_rle(blob)
    uncompressed = {"size": [H, W], "counts": [int(c) for c in _runs(blob)]}
    regions = Regions([("polygon", POLY), ("rle", rle), ("rle", uncompressed), ("box", [2.5, 3, 12, 9.5]),
                       ("mask", blob)], (H, W))
    masks = regions.to_masks()
    assert masks.shape == (5, H, W) and masks.dtype == bool
    assert np.array_equal(masks[0], ref_mask(POLY))
    assert np.array_equal(masks[1], blob) and np.array_equal(masks[2], blob) and np.array_equal(masks[4], blob)
    box_ref = mask_utils.decode(mask_utils.frPyObjects(np.array([[2.5, 3, 9.5, 6.5]]), H, W)[0]).astype(bool)
    assert np.array_equal(masks[3], box_ref)
    boxes = regions.to_boxes()
    np.testing.assert_allclose(boxes[0], [5.5, 3.0, 25.0, 22.5])
    np.testing.assert_allclose(boxes[1], [2, 4, 37, 25])  # tight box of the pixels, as toBbox
    np.testing.assert_allclose(boxes[3], [2.5, 3, 12, 9.5])
    np.testing.assert_allclose(boxes[4], boxes[1])


def _runs(mask):
    flat = mask.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], change]))


def test_xywh_constructor_and_dicts():
    r = Regions.from_xywh([[1, 2, 3, 4]], (10, 10))
    np.testing.assert_allclose(r.to_boxes(), [[1, 2, 4, 6]])
    d = Regions.from_dicts([{"bbox": [1, 2, 3, 4]}, {"segmentation": POLY, "bbox": [0, 0, 1, 1]}], (H, W))
    assert d.kinds == ["box", "polygon"]


@pytest.mark.parametrize("items, size, message", [
    ([("polygon", [[0, 0, 5, 5]])], (H, W), "needs at least 3"),
    ([("box", [5, 5, 5, 9])], (H, W), "zero or negative area"),
    ([("box", [5, 5, 3, 9])], (H, W), "zero or negative area"),
    ([("rle", {"size": [H + 1, W], "counts": "abc"})], (H, W), "does not match the image size"),
    ([("rle", {"size": [H, W], "counts": [5, 5]})], (H, W), "run lengths sum"),
    ([("box", [W + 1, 0, W + 5, 5])], (H, W), "entirely outside"),
])
def test_validation_errors(items, size, message):
    with pytest.raises(DataError, match=message):
        Regions(items, size, where="ann.json: annotations[0]")


def test_out_of_bounds_clip_or_error():
    r = Regions([("box", [-3, 2, 10, 50]), ("box", [1, 1, 5, 5])], (H, W))
    assert r.num_clipped == 1
    np.testing.assert_allclose(r.to_boxes()[0], [0, 2, 10, H])
    with pytest.raises(DataError, match="outside the image"):
        Regions([("box", [-3, 2, 10, 50])], (H, W), out_of_bounds="error")
    # size unknown at first: validated when the image is decoded
    late = Regions([("box", [-3, 2, 10, 50])])
    assert late.with_image_size(H, W).num_clipped == 1
    with pytest.raises(DataError, match="image is"):
        Regions([("box", [1, 1, 3, 3])], (H, W)).with_image_size(H + 1, W)


def test_transforms_match_mask_transforms():
    regions = Regions([("polygon", POLY), ("box", [3, 4, 15, 11])], (H, W))
    masks = regions.to_masks()
    np.testing.assert_array_equal(regions.crop(4, 2, 30, 25).to_masks(), masks[:, 2:25, 4:30])
    padded = regions.pad(3, 2, 5, 1).to_masks()
    assert padded.shape == (2, H + 3, W + 8)
    np.testing.assert_array_equal(padded[:, 2:2 + H, 3:3 + W], masks)
    assert not padded[:, :2].any() and not padded[:, :, :3].any()
    # exact 2x upscale of a polygon covers each source pixel's 2x2 block (up to boundary pixels)
    up = regions.resize(2 * H, 2 * W).to_masks()
    np.testing.assert_allclose(regions.resize(2 * H, 2 * W).to_boxes(), regions.to_boxes() * 2)
    block = masks.repeat(2, 1).repeat(2, 2)
    assert (up != block).mean() < 0.03
    # RLE/mask regions are resized by nearest neighbour on pixel centres
    rle = Regions([("rle", mask_to_rle(masks[0]))], (H, W))
    np.testing.assert_array_equal(rle.resize(2 * H, 2 * W).to_masks()[0], block[0])
    np.testing.assert_array_equal(rle.crop(4, 2, 30, 25).to_masks()[0], masks[0, 2:25, 4:30])


def test_crop_keeps_indices_of_regions_outside():
    r = Regions([("box", [0, 0, 5, 5]), ("box", [20, 20, 30, 28])], (H, W)).crop(10, 10, 40, 30)
    assert len(r) == 2 and not r.to_masks()[0].any()
    np.testing.assert_allclose(r.to_boxes(), [[0, 0, 0, 0], [10, 10, 20, 18]])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, W - 2), st.integers(0, H - 2), st.integers(1, 15), st.integers(1, 15)),
                min_size=1, max_size=5))
def test_box_masks_and_pad_crop_property(boxes):
    xyxy = [[x, y, min(x + w, W), min(y + h, H)] for x, y, w, h in boxes]
    r = Regions.from_boxes(xyxy, (H, W))
    masks = r.to_masks()
    for m, (x0, y0, x1, y1) in zip(masks, xyxy):
        expect = np.zeros((H, W), bool)
        expect[y0:y1, x0:x1] = True
        np.testing.assert_array_equal(m, expect)
    back = r.pad(2, 3, 4, 5).crop(2, 3, 2 + W, 3 + H)   # pad then crop the padding away: the identity
    np.testing.assert_array_equal(back.to_masks(), masks)
    np.testing.assert_allclose(back.to_boxes(), r.to_boxes())


# -- the processor: image and masks transformed together --------------------------------------------------------
def _scene(h, w):
    img = np.full((h, w, 3), 0, np.uint8)
    poly = [[w * 0.2, h * 0.1, w * 0.7, h * 0.2, w * 0.5, h * 0.9]]
    mask = ref_mask(poly, h, w)
    img[mask] = 255
    return img, poly


@pytest.mark.parametrize("mode", ["pad", "resize"])
@pytest.mark.parametrize("hw", [(48, 80), (80, 48)])
def test_processor_aligns_masks_with_pixels(mode, hw):
    img, poly = _scene(*hw)
    proc = ImageProcessor(64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize_mode=mode)
    out = proc(img, Regions([("polygon", poly), ("box", [0, 0, hw[1], hw[0]])]))
    assert out["pixel_values"].shape == (3, 64, 64) and out["region_masks"].shape == (2, 64, 64)
    bright = (out["pixel_values"][0] > 0.5).numpy()
    m = out["region_masks"][0].numpy() > 0.5
    assert (bright & m).sum() / (bright | m).sum() > 0.9
    box = out["region_boxes"][1].numpy()
    if mode == "resize":
        np.testing.assert_allclose(box, [0, 0, 64, 64], atol=1e-4)
    else:  # the image occupies the centred band; the box says where
        s = 64 / max(hw)
        h, w = hw[0] * s, hw[1] * s
        np.testing.assert_allclose(box, [(64 - w) / 2, (64 - h) / 2, (64 + w) / 2, (64 + h) / 2], atol=0.6)


def test_load_image_modes_and_exif(tmp_path):
    gray = Image.fromarray(np.full((6, 4), 100, np.uint8), "L")
    assert load_image(gray).mode == "RGB"
    rgba = Image.new("RGBA", (4, 6), (255, 0, 0, 0))  # fully transparent → white background
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)
    pal = gray.convert("P")
    assert load_image(pal).mode == "RGB"
    im = Image.new("RGB", (8, 4), (0, 0, 0))
    im.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rot.jpg"
    im.save(path, exif=exif, quality=100)
    loaded = load_image(str(path))
    assert loaded.size == (4, 8)
    with pytest.raises(DataError, match="image file not found"):
        load_image(str(tmp_path / "missing.jpg"))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot decode"):
        load_image(str(tmp_path / "bad.jpg"))


def test_processor_text_only_and_region_without_image():
    out = ImageProcessor(16)(None)
    assert out["pixel_values"].abs().sum() == 0 and out["region_masks"].shape == (0, 16, 16)
    with pytest.raises(DataError, match="no image"):
        ImageProcessor(16)(None, Regions([("box", [0, 0, 1, 1])]))
