"""One parser for a user's region (command line, Python, serve, predict files) and one mask rule: non-zero =
inside; alpha, when present, is the mask."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from regionvlm.data.region_input import (
    MAX_REGION_FILE_BYTES,
    mask_from_picture,
    parse_region,
    parse_region_spec,
    parse_regions,
)
from regionvlm.errors import DataError

H, W = 30, 40


def square() -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[5:20, 10:25] = True
    return m


@pytest.mark.parametrize("mode, inside, outside", [
    ("L", 1, 0), ("L", 255, 0), ("1", 1, 0), ("RGB", (0, 0, 1), (0, 0, 0)), ("I;16", 300, 0),
    ("RGBA", (255, 0, 0, 255), (255, 255, 255, 0)),    # an opaque square on a transparent white background
    ("LA", (0, 255), (200, 0)),                           # alpha is the mask, whatever the grey says
])
def test_every_picture_mode_gives_the_same_mask(tmp_path, mode, inside, outside):
    picture = Image.new(mode, (W, H), outside)
    picture.paste(inside, (10, 5, 25, 20))
    path = tmp_path / "mask.png"
    picture.save(path)
    assert np.array_equal(mask_from_picture(picture), square())
    assert np.array_equal(parse_region_spec(f"mask:{path}")[1], square())
    assert np.array_equal(parse_region({"mask": str(path)})[1], square())


def test_a_palette_picture_with_transparency_is_its_alpha():
    pal = Image.new("P", (W, H), 0)
    pal.putpalette([255, 255, 255, 0, 128, 0])
    pal.paste(1, (10, 5, 25, 20))
    pal.info["transparency"] = 0
    assert np.array_equal(mask_from_picture(pal), square())


def test_all_forms_name_the_same_region():
    import torch
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(square().astype(np.uint8)))
    forms = [square(), square().astype(np.uint8), square().astype(np.float32) * 0.4, torch.from_numpy(square()),
             Image.fromarray(square().astype(np.uint8)), {"mask": square()}, rle, {"rle": rle},
             {"segmentation": rle}, [10, 5, 25, 20], "box:10,5,25,20", {"box": [10, 5, 25, 20]},
             {"bbox": [10, 5, 15, 15]}, {"bbox_xyxy": [10, 5, 25, 20]}, [[10, 5, 25, 5, 25, 20, 10, 20]],
             "polygon:10,5,25,5,25,20,10,20"]
    masks = parse_regions(forms).with_image_size(H, W).to_masks()
    for k, m in enumerate(masks):
        assert np.array_equal(m, square()), forms[k]


@pytest.mark.parametrize("spec, fragment", [
    ("circle:1,2", "expected box:x1,y1,x2,y2"), ("box:1,2,3", "a box needs 4 numbers"),
    ("box:a,b,c,d", "expected comma-separated numbers"), ("mask:/no/such.png", "cannot read"),
    ("rle:/dev/zero", "is not a regular file"),
])
def test_bad_specs_are_one_line(spec, fragment):
    with pytest.raises(DataError, match=fragment):
        parse_region_spec(spec, "--region[0]")


def test_a_fifo_is_refused_not_read(tmp_path):
    fifo = tmp_path / "mask.png"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="is not a regular file"):
        parse_region_spec(f"mask:{fifo}")


def test_a_huge_file_is_refused_before_it_is_read(tmp_path):
    big = tmp_path / "rle.json"
    with open(big, "wb") as f:
        f.truncate(MAX_REGION_FILE_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(DataError, match="over the limit"):
        parse_region_spec(f"rle:{big}")


def test_an_undecodable_mask_is_one_line(tmp_path):
    bad = tmp_path / "mask.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot decode mask"):
        parse_region_spec(f"mask:{bad}")
    png = io.BytesIO()
    Image.new("L", (4, 4)).save(png, "PNG")
    bad.write_bytes(png.getvalue())
    with pytest.raises(DataError, match="mask is empty"):
        parse_regions([f"mask:{bad}"])
