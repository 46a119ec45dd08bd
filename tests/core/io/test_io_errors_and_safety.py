"""Bad inputs raise InputFileError naming the file; writes are atomic and never touch inputs."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
from io_testutils import NIBABEL_DATA, build_series, write_brats
from pydicom.data import get_testdata_file

from napari_medadv.core.errors import InputFileError
from napari_medadv.core.io import read_image, write_image, write_labels


def _truncated_gz(p):
    data = (NIBABEL_DATA / "example4d.nii.gz").read_bytes()
    (p / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    return p / "cut.nii.gz"


def _truncated_nii(p):
    data = (NIBABEL_DATA / "anatomical.nii").read_bytes()
    (p / "cut.nii").write_bytes(data[: len(data) - 1000])
    return p / "cut.nii"


def _garbage_gz(p):
    (p / "junk.nii.gz").write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    return p / "junk.nii.gz"


def _five_d(p):
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 1, 2), np.float32), np.eye(4)), p / "five.nii.gz")
    return p / "five.nii.gz"


def _nan_nifti(p):
    data = np.zeros((3, 3, 3), np.float32)
    data[1, 1, 1], data[0, 0, 0] = np.nan, np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), p / "nan.nii.gz")
    return p / "nan.nii.gz"


def _empty_dir(p):
    (p / "empty").mkdir()
    return p / "empty"


def _folder_of_text(p):
    (p / "notes").mkdir()
    (p / "notes" / "a.txt").write_text("hello")
    return p / "notes"


def _empty_file(p):
    (p / "zero.nii").write_bytes(b"")
    return p / "zero.nii"


def _unknown_suffix(p):
    (p / "image.xyz").write_bytes(b"\0" * 300)
    return p / "image.xyz"


def _truncated_png(p):
    noise = np.random.default_rng(0).integers(0, 65535, (64, 64), dtype=np.uint16)
    iio.imwrite(p / "full.png", noise)
    data = (p / "full.png").read_bytes()
    (p / "broken.png").write_bytes(data[: len(data) // 2])
    return p / "broken.png"


def _text_as_png(p):
    (p / "notes.png").write_text("not an image at all")
    return p / "notes.png"


def _truncated_dicom(p):
    data = Path(get_testdata_file("CT_small.dcm", download=False)).read_bytes()
    (p / "cut.dcm").write_bytes(data[: len(data) // 2])
    return p / "cut.dcm"


def _dicom_garbage(p):
    (p / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    return p / "garbage.dcm"


BAD_INPUTS = [
    (lambda p: p / "missing.nii.gz", "missing.nii.gz", "no such file"),
    (_empty_dir, "empty", "folder is empty"),
    (_folder_of_text, "notes", "no BraTS case"),
    (_empty_file, "zero.nii", "file is empty"),
    (_unknown_suffix, "image.xyz", "unsupported format .xyz"),
    (_truncated_gz, "cut.nii.gz", "truncated or corrupt"),
    (_truncated_nii, "cut.nii", "truncated or corrupt"),
    (_garbage_gz, "junk.nii.gz", "cannot read NIfTI"),
    (_five_d, "five.nii.gz", "5-D NIfTI"),
    (_nan_nifti, "nan.nii.gz", "2 NaN/Inf voxels"),
    (_truncated_png, "broken.png", "cannot read PNG image"),
    (_text_as_png, "notes.png", "not a PNG file"),
    (_truncated_dicom, "cut.dcm", "truncated or corrupt"),
    (_dicom_garbage, "garbage.dcm", "no image pixel data"),
]


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning")
@pytest.mark.parametrize(
    "make, name, match", BAD_INPUTS, ids=[b[1] + "-" + b[2].split()[0] for b in BAD_INPUTS]
)
def test_bad_input_raises_input_file_error(tmp_path, make, name, match):
    path = make(tmp_path)
    with pytest.raises(InputFileError, match=match) as err:
        read_image(path)
    assert name in str(err.value)
    assert isinstance(err.value, ValueError)


# -- output safety -------------------------------------------------------------------------
def test_refuses_to_overwrite_a_file_source(tmp_path):
    src = tmp_path / "anat.nii"
    shutil.copy(NIBABEL_DATA / "anatomical.nii", src)
    img = read_image(src)
    before = src.read_bytes()
    for target in (src, tmp_path / "." / "anat.nii"):
        with pytest.raises(InputFileError, match="refusing to overwrite the input"):
            write_image(img.array + 1, target, like=img)
    (tmp_path / "link.nii").symlink_to(src)
    with pytest.raises(InputFileError, match="refusing to overwrite the input"):
        write_image(img.array + 1, tmp_path / "link.nii", like=img)
    with pytest.raises(InputFileError, match="refusing to overwrite the input"):
        write_labels(np.zeros(img.spatial_shape, int), src, like=img)
    assert src.read_bytes() == before


def test_refuses_writing_into_source_folders(tmp_path):
    series = build_series(tmp_path / "series", n=2)
    img = read_image(series["folder"])
    for target in (series["files"][0], series["folder"] / "new.nii.gz", series["folder"]):
        with pytest.raises(InputFileError, match="refusing"):
            write_image(img.array, target, like=img)
    case = write_brats(tmp_path / "case")
    brats = read_image(case["folder"])
    for target in (
        case["folder"] / "case001_seg.nii.gz",
        case["folder"] / "case001_t1.nii.gz",
        case["folder"] / "extra.nii.gz",
    ):
        with pytest.raises(InputFileError, match="refusing"):
            write_image(brats.array, target, like=brats)
        with pytest.raises(InputFileError, match="refusing"):
            write_labels(brats.labels, target, like=brats)


def test_no_temp_file_left_when_a_write_fails(tmp_path, monkeypatch):
    img = read_image(NIBABEL_DATA / "anatomical.nii")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "adv.nii.gz").write_bytes(b"previous result")

    def exploding_save(img, filename):
        with open(filename, "wb") as fh:
            fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", exploding_save)
    with pytest.raises(InputFileError, match=r"adv\.nii\.gz: cannot write: disk full"):
        write_image(img.array, out_dir / "adv.nii.gz", like=img)
    assert sorted(p.name for p in out_dir.iterdir()) == ["adv.nii.gz"]
    assert (out_dir / "adv.nii.gz").read_bytes() == b"previous result"  # untouched


def test_no_temp_folder_left_when_a_series_write_fails(tmp_path, monkeypatch):
    series = build_series(tmp_path / "series", n=3)
    img = read_image(series["folder"])
    calls = []

    def flaky_save(filename, dataset, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError("device gone")
        with open(filename, "wb") as fh:
            fh.write(b"x")

    import pydicom

    monkeypatch.setattr(pydicom, "dcmwrite", flaky_save)
    with pytest.raises(InputFileError, match="device gone"):
        write_image(img.array, tmp_path / "out" / "adv", like=img)
    assert list((tmp_path / "out").iterdir()) == []


def test_write_checks_shape_and_values(tmp_path):
    img = read_image(NIBABEL_DATA / "anatomical.nii")
    with pytest.raises(InputFileError, match="does not match the source image"):
        write_image(img.array[:, :-1], tmp_path / "a.nii", like=img)
    bad = img.array.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputFileError, match="NaN"):
        write_image(bad, tmp_path / "a.nii", like=img)
    with pytest.raises(InputFileError, match="unsupported output format .bmp"):
        write_image(img.array, tmp_path / "a.bmp", like=img)
    with pytest.raises(InputFileError, match=r"\.dcm file can only be derived"):
        write_image(img.array, tmp_path / "a.dcm", like=img)
    # a single-channel image may be given without its channel axis
    out = write_image(img.array[0], tmp_path / "b.nii", like=img)
    np.testing.assert_array_equal(read_image(out).array, img.array)


def test_io_does_not_import_gui_modules():
    code = (
        "import sys, napari_medadv.core.io as m\n"
        "bad = [n for n in ('napari', 'qtpy', 'magicgui') if n in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
