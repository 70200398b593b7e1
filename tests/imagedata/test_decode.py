"""Decoding: every kind of image a user may have, and every kind of bad file, through the public API."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.errors import ImageDecodeError
from cnnlab.imagedata.decode import decode_image
from tests.helpers.fakeweb import bad_exif_jpeg
from tests.helpers.images import make_image


def test_plain_jpeg_decodes_to_rgb(tmp_path: Path) -> None:
    img = decode_image(make_image(tmp_path / "a.jpg", (40, 30)))
    assert img.mode == "RGB" and img.size == (40, 30)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "rot.jpg"
    img = Image.new("RGB", (60, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(path, exif=exif)
    assert decode_image(path).size == (20, 60)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "1"])
def test_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    suffix = ".jpg" if mode == "CMYK" else ".png"
    img = decode_image(make_image(tmp_path / f"m{suffix}", mode=mode))
    assert img.mode == "RGB" and img.size == (64, 48)


def test_rgba_is_composited_onto_white(tmp_path: Path) -> None:
    path = tmp_path / "alpha.png"
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (0, 0, 255, 255))  # one opaque blue pixel
    rgba.save(path)
    img = decode_image(path)
    assert img.getpixel((5, 5)) == (255, 255, 255)
    assert img.getpixel((0, 0)) == (0, 0, 255)


def test_palette_with_transparency_is_composited(tmp_path: Path) -> None:
    path = tmp_path / "pal.png"
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.info["transparency"] = 0
    p.save(path, transparency=0)
    assert decode_image(path).getpixel((3, 3)) == (255, 255, 255)


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    array = np.full((6, 6), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    Image.fromarray(array).save(path)
    value = decode_image(path).getpixel((2, 2))
    assert value == (128, 128, 128)


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    r, g, b = decode_image(path).getpixel((8, 8))
    assert r > 200 and b < 50


def test_webp_decodes(tmp_path: Path) -> None:
    img = decode_image(make_image(tmp_path / "w.webp", (32, 32)))
    assert img.size == (32, 32)


def test_draft_decodes_large_jpeg_at_reduced_scale(tmp_path: Path) -> None:
    path = make_image(tmp_path / "big.jpg", (1600, 1200))
    assert decode_image(path).size == (1600, 1200)
    small = decode_image(path, draft_to=256)
    assert small.size == (400, 300)  # 1/4 scale still covers 256 on both sides


def test_bytes_input(tmp_path: Path) -> None:
    data = make_image(tmp_path / "b.png").read_bytes()
    assert decode_image(data).size == (64, 48)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"<html><body>not found</body></html>", "not-an-image"),
    ],
)
def test_bad_bytes(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    assert info.value.reason == reason


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = make_image(tmp_path / "t.jpg", (200, 200), quality=95).read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    assert info.value.reason == "truncated"


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    Image.new("1", (5000, 5000)).save(path)  # 25 Mpx that compress to a few kB
    assert path.stat().st_size < 100_000
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path, max_pixels=10_000_000)
    assert info.value.reason == "decompression-bomb"


def test_a_bomb_pillow_refuses_first_is_told_with_our_limit(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    Image.new("1", (30000, 30000)).save(path)  # beyond Pillow's own limit: it refuses before cnnlab looks
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path, max_pixels=1_000_000)
    assert info.value.reason == "decompression-bomb"
    assert "900,000,000 pixels exceeds the limit of 1,000,000" in str(info.value)


def test_missing_and_too_small(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(tmp_path / "nope.jpg")
    assert info.value.reason == "missing"
    with pytest.raises(ImageDecodeError) as info:
        decode_image(make_image(tmp_path / "tiny.png", (10, 8)), min_size=16)
    assert info.value.reason == "too-small"


def test_png_bytes_with_jpeg_name_still_decode(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (9, 9), (1, 2, 3)).save(buffer, format="PNG")
    path = tmp_path / "liar.jpg"
    path.write_bytes(buffer.getvalue())
    assert decode_image(path).getpixel((0, 0)) == (1, 2, 3)


def test_a_photo_whose_exif_cannot_be_written_back_decodes_upright(tmp_path: Path) -> None:
    """Issue 27, item 2: an ASCII EXIF tag where the standard says a number made Pillow's EXIF rewrite raise
    struct.error in collect, split, train and predict; the pixels and the orientation are fine."""
    from cnnlab.imagedata.preprocess import Preprocessing

    path = tmp_path / "odd-exif.jpg"
    path.write_bytes(bad_exif_jpeg((80, 60), orientation=6))
    img = decode_image(path)
    assert img.mode == "RGB" and img.size == (60, 80)  # orientation 6 still applied
    assert "exif" not in img.info  # upright pixels carry no orientation to apply twice
    pre = Preprocessing(resize_size=32, crop_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert tuple(pre.load(path).shape) == (3, 32, 32)  # the path train and predict read images through


def test_an_unreadable_exif_block_is_ignored() -> None:
    """A broken EXIF block is no reason to lose the photo: it decodes as stored."""
    data = bytearray(bad_exif_jpeg((80, 60), orientation=6))
    tiff = data.find(b"Exif\x00\x00") + 6
    data[tiff : tiff + 4] = b"XXXX"  # not a TIFF header: the EXIF block cannot be parsed at all
    assert decode_image(bytes(data)).size == (80, 60)


def test_a_float_image_with_an_inf_pixel_keeps_its_picture(tmp_path: Path) -> None:
    """Issue 27: one ``inf`` pixel in a float TIFF turned the whole image black."""
    import numpy as np
    from PIL import Image

    array = np.tile(np.linspace(0.0, 1000.0, 64, dtype=np.float32), (32, 1))
    array[0, 0] = np.inf
    array[0, 1] = np.nan
    path = tmp_path / "float.tif"
    Image.fromarray(array, mode="F").save(path)
    rgb = np.asarray(decode_image(path))
    assert rgb.shape == (32, 64, 3)
    assert rgb[5, -1, 0] == 255 and rgb[5, 0, 0] == 0 and 100 < rgb[5, 32, 0] < 160  # a ramp, not black
    assert rgb[0, 0, 0] == 255 and rgb[0, 1, 0] == 0
