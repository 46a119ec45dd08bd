"""PNG / JPEG / TIFF radiographs written with imageio in tmp_path."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from napari_medadv.core.errors import InputFileError
from napari_medadv.core.io import read_image, read_labels, write_image, write_labels

RAMP8 = (np.arange(24 * 32).reshape(24, 32) % 256).astype(np.uint8)
RAMP16 = (np.arange(24 * 32).reshape(24, 32) * 85).astype(np.uint16)


@pytest.mark.parametrize(
    "name, data, kind, bits",
    [
        ("g8.png", RAMP8, "png", 8),
        ("g16.png", RAMP16, "png", 16),
        ("g8.tif", RAMP8, "tiff", 8),
        ("g16.tiff", RAMP16, "tiff", 16),
    ],
)
def test_gray_read_and_png_round_trip(tmp_path, name, data, kind, bits):
    iio.imwrite(tmp_path / name, data)
    img = read_image(tmp_path / name)
    assert img.kind == kind and img.array.shape == (1, 24, 32) and img.array.dtype == np.float32
    np.testing.assert_array_equal(img.array[0], data)
    assert img.meta["bit_depth"] == bits and img.geometry.spacing == (1.0, 1.0)
    perturbed = img.array.copy()
    perturbed[0, 5:9, 5:9] += 3.4  # rounds to +3
    for suffix in (".png", ".tif"):
        out = write_image(perturbed, tmp_path / "out" / f"adv{suffix}", like=img)
        written = iio.imread(out)
        assert written.dtype == data.dtype  # 16-bit stays 16-bit, 8-bit stays 8-bit
        back = read_image(out)
        np.testing.assert_array_equal(back.array, np.clip(np.rint(perturbed), 0, 2**bits - 1))
        np.testing.assert_array_equal(back.geometry.affine, img.geometry.affine)


def test_rgb_jpeg_and_rgba_png_become_luma(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    iio.imwrite(tmp_path / "c.jpg", rgb, quality=100)
    img = read_image(tmp_path / "c.jpg")
    assert img.kind == "jpeg" and img.array.shape == (1, 16, 16) and img.meta["colour"] == "rgb"
    luma = 0.299 * 200 + 0.587 * 100 + 0.114 * 50
    assert abs(float(img.array.mean()) - luma) < 2.0  # JPEG is lossy
    rgba = np.dstack([rgb, np.full((16, 16), 255, np.uint8)])
    iio.imwrite(tmp_path / "c.png", rgba)
    img = read_image(tmp_path / "c.png")
    np.testing.assert_allclose(img.array, luma, atol=1e-4)
    assert img.meta["bit_depth"] == 8 and img.meta["colour"] == "rgba"


def test_jpeg_source_written_as_png_not_jpeg(tmp_path):
    iio.imwrite(tmp_path / "x.jpg", np.dstack([RAMP8] * 3))
    img = read_image(tmp_path / "x.jpg")
    assert iio.imread(write_image(img.array, tmp_path / "x.png", like=img)).dtype == np.uint8
    with pytest.raises(InputFileError, match=r"y\.jpg: JPEG is lossy"):
        write_image(img.array, tmp_path / "y.jpg", like=img)


def test_float_tiff_kept_float(tmp_path):
    data = np.linspace(-1, 1, 24 * 32, dtype=np.float32).reshape(24, 32)
    iio.imwrite(tmp_path / "f.tif", data)
    img = read_image(tmp_path / "f.tif")
    out = write_image(img.array * 0.5, tmp_path / "g.tif", like=img)
    np.testing.assert_array_equal(read_image(out).array, img.array * 0.5)
    with pytest.raises(
        InputFileError, match="PNG output needs a source with integer stored values"
    ):
        write_image(img.array, tmp_path / "g.png", like=img)


def test_png_labels_round_trip(tmp_path):
    iio.imwrite(tmp_path / "g8.png", RAMP8)
    img = read_image(tmp_path / "g8.png")
    labels = (RAMP8 % 3).astype(np.int64)
    out = write_labels(labels, tmp_path / "seg.png", like=img)
    np.testing.assert_array_equal(read_labels(out, like=img), labels)
    with pytest.raises(InputFileError, match=r"seg\.png.*does not match"):
        read_labels(out, like=read_image(_write(tmp_path / "other.png", RAMP8[:-1])))


def _write(path, data):
    iio.imwrite(path, data)
    return path


@pytest.mark.parametrize(
    "writer, match",
    [
        (lambda p: _write(p / "multi.tif", np.stack([RAMP16] * 5)), "multi-page"),
        (lambda p: _sixteen_bit_rgb_png(p / "c16.png"), "16-bit colour PNG"),
        (lambda p: _write(p / "nan.tif", np.full((4, 4), np.nan, np.float32)), "16 NaN/Inf"),
    ],
    ids=["multipage-tiff", "rgb16-png", "nan-tiff"],
)
def test_bad_raster_inputs(tmp_path, writer, match):
    path = writer(tmp_path)
    with pytest.raises(InputFileError, match=match) as err:
        read_image(path)
    assert path.name in str(err.value)


def _sixteen_bit_rgb_png(path):
    """A valid 16-bit RGB PNG written by hand (Pillow would silently drop it to 8 bits)."""
    import struct
    import zlib

    h, w = 3, 4
    raw = b"".join(b"\x00" + np.full((w, 3), 40000, ">u2").tobytes() for _ in range(h))

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return path
