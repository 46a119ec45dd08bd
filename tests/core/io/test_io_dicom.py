"""DICOM: series geometry (vs hand computation and nibabel), radiographs, derived writers."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pydicom
import pytest
from io_testutils import build_series, pydicom_file

from napari_medadv.core.errors import InputFileError
from napari_medadv.core.io import LPS_TO_RAS, read_image, write_image

DESCRIPTION = "adversarially perturbed image (napari-medadv)"


def _sagittal_oblique_iop(deg: float) -> tuple[float, ...]:
    """Rows along a tilted A-P axis, columns along -S: a sagittal-ish oblique plane."""
    t = np.deg2rad(deg)
    row = np.array([0.0, np.cos(t), np.sin(t)])
    col = np.array([0.0, -np.sin(t), np.cos(t)]) * -1
    return (*row, *col)


@pytest.mark.parametrize(
    "iop",
    [None, (0, 1, 0, 0, 0, -1), _sagittal_oblique_iop(20)],
    ids=["axial", "sagittal", "oblique"],
)
def test_series_sorted_by_position_and_affine_hand_computed(tmp_path, iop):
    s = build_series(tmp_path / "series", iop=iop)
    img = read_image(s["folder"])
    assert img.kind == "dicom-series" and img.array.shape == (1, 5, 128, 128)
    # slice k (position order) carries +7k in stored values, whatever the file names
    for k in range(5):
        expected = (s["base"] + 7 * k) * s["slope"] + s["intercept"]
        np.testing.assert_array_equal(img.array[0, k], expected.astype(np.float32))
    # hand-computed: world(k, r, c) = IPP_k + r * dr * col_cos + c * dc * row_cos (LPS)
    row_cos, col_cos = s["iop"][:3], s["iop"][3:]
    dr, dc = s["pixel_spacing"]
    for k, r, c in [(0, 0, 0), (4, 0, 0), (2, 17, 99), (3, 127, 5)]:
        world_lps = s["ipps"][k] + r * dr * col_cos + c * dc * row_cos
        world_ras = LPS_TO_RAS[:3, :3] @ world_lps
        np.testing.assert_allclose(img.geometry.affine @ [k, r, c, 1], [*world_ras, 1], atol=1e-4)
    np.testing.assert_allclose(img.geometry.spacing, (2.5, dr, dc), atol=1e-5)
    np.testing.assert_allclose(
        img.meta["slice_positions"], np.arange(5) * 2.5 + img.meta["slice_positions"][0]
    )


def test_series_in_plane_geometry_matches_nibabel(ct_series):
    """nibabel's DICOM wrapper gives an LPS affine for (row, column, slice) of one file."""
    img = read_image(ct_series["folder"])
    first = pydicom.dcmread(ct_series["files"][0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "DICOM readers are highly experimental"
        from nibabel.nicom import dicomwrappers

        nib_affine = dicomwrappers.wrapper_from_data(first).affine
    ours_lps = LPS_TO_RAS @ img.geometry.affine
    np.testing.assert_allclose(ours_lps[:3, 1], nib_affine[:3, 0], atol=1e-6)  # row index
    np.testing.assert_allclose(ours_lps[:3, 2], nib_affine[:3, 1], atol=1e-6)  # column index
    np.testing.assert_allclose(ours_lps[:3, 3], nib_affine[:3, 3], atol=1e-5)  # first slice IPP
    # nibabel's 3rd column is the normal of a right-handed frame; ours follows the positions
    assert abs(abs(ours_lps[:3, 0] @ nib_affine[:3, 2]) / (2.5 * 5) - 1) < 1e-6


def test_series_with_gantry_tilt_gives_exact_sheared_affine(tmp_path):
    s = build_series(tmp_path / "tilt", tilt=(0.0, 0.8, 0.0))
    img = read_image(s["folder"])
    assert not img.geometry.is_axis_aligned()
    for k in range(5):
        np.testing.assert_allclose(
            img.geometry.affine @ [k, 0, 0, 1], [*(LPS_TO_RAS[:3, :3] @ s["ipps"][k]), 1], atol=1e-4
        )


def test_series_ignores_non_dicom_and_non_image_files(ct_series):
    (ct_series["folder"] / "README.txt").write_text("not an image")
    shutil.copy(pydicom_file("rtplan.dcm"), ct_series["folder"] / "plan.dcm")  # no pixel data
    assert read_image(ct_series["folder"]).array.shape == (1, 5, 128, 128)


def test_multiple_series_listed_and_selectable(tmp_path):
    folder = tmp_path / "mixed"
    ct = build_series(folder, n=3)
    mr = build_series(folder, source="MR_small.dcm", n=2, seed=1)
    with pytest.raises(InputFileError, match="holds 2 DICOM series") as err:
        read_image(folder)
    assert ct["series_uid"] in str(err.value) and mr["series_uid"] in str(err.value)
    assert read_image(folder, series_uid=mr["series_uid"]).array.shape == (1, 2, 64, 64)
    with pytest.raises(InputFileError, match="no series 1.2.3"):
        read_image(folder, series_uid="1.2.3")


@pytest.mark.parametrize(
    "positions, match",
    [
        ([0, 2.5, 2.5, 5.0], "share a position"),
        ([0, 2.5, 5.0, 10.0], "not uniform"),
    ],
    ids=["duplicate", "gap"],
)
def test_series_refuses_ambiguous_slices(tmp_path, positions, match):
    s = build_series(tmp_path / "bad", positions=positions)
    with pytest.raises(InputFileError, match=match):
        read_image(s["folder"])


def test_series_round_trip_derived(tmp_path, ct_series):
    img = read_image(ct_series["folder"])
    rng = np.random.default_rng(0)
    perturbed = img.array + rng.integers(-3, 4, img.array.shape).astype(np.float32)
    out = write_image(perturbed, tmp_path / "adv_series", like=img)
    files = sorted(out.iterdir())
    assert len(files) == 5 and not any(p.name.startswith(".") for p in tmp_path.iterdir())
    back = read_image(out)
    np.testing.assert_array_equal(back.array, perturbed)  # slope 1: integers survive exactly
    np.testing.assert_allclose(back.geometry.affine, img.geometry.affine, atol=1e-5)
    written = [pydicom.dcmread(f) for f in files]
    src_sops = {ds.SOPInstanceUID for ds in img.meta["datasets"]}
    assert len({ds.SeriesInstanceUID for ds in written}) == 1
    assert written[0].SeriesInstanceUID != ct_series["series_uid"]
    assert not src_sops & {ds.SOPInstanceUID for ds in written}
    for ds in written:
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]  # value 3 kept (CT IOD)
        assert ds.DerivationDescription == DESCRIPTION
        assert ds.SeriesDescription == DESCRIPTION[:64]
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID in src_sops
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    with pytest.raises(InputFileError, match="not empty"):
        write_image(perturbed, out, like=img)


def test_series_exported_to_nifti_keeps_world_positions(tmp_path):
    s = build_series(tmp_path / "series", iop=_sagittal_oblique_iop(20))
    img = read_image(s["folder"])
    back = read_image(write_image(img.array, tmp_path / "vol.nii.gz", like=img, derived=False))
    np.testing.assert_array_equal(back.array, img.array)
    np.testing.assert_allclose(back.geometry.affine, img.geometry.affine, atol=1e-4)


def test_ct_slice_rescale_and_window():
    path = pydicom_file("CT_small.dcm")
    img = read_image(path)
    ds = pydicom.dcmread(path)
    assert img.kind == "dicom" and img.array.shape == (1, 128, 128) and img.spatial_dims == 2
    np.testing.assert_array_equal(img.array[0], ds.pixel_array * 1.0 - 1024.0)  # HU
    np.testing.assert_allclose(img.geometry.spacing, [0.661468, 0.661468])
    assert img.meta["spacing_source"] == "PixelSpacing" and img.meta["window"] is None
    assert img.meta["photometric"] == "MONOCHROME2" and not img.meta["inverted"]


@pytest.fixture(scope="module")
def radiograph():
    path = pydicom_file("RG1_UNCR.dcm")  # NEMA CR chest, 15-bit MONOCHROME1 (pydicom-data)
    return path, read_image(path)


def test_monochrome1_radiograph_is_inverted(radiograph):
    path, img = radiograph
    raw = pydicom.dcmread(path).pixel_array
    assert img.kind == "dicom" and img.array.shape == (1, 1955, 1841)
    assert img.meta["photometric"] == "MONOCHROME1" and img.meta["inverted"]
    np.testing.assert_array_equal(img.array[0], 32767.0 - raw)  # bright = dense
    assert img.meta["bit_depth"] == 15 and img.meta["stored_range"] == (0.0, 32767.0)
    assert img.meta["window"] == (32767.0 - 15000.0, 30000.0)  # window moved with the data
    assert img.meta["spacing_source"] == "default"  # its PixelSpacing is 0\0


def test_imager_pixel_spacing_used(tmp_path):
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [0.2, 0.25]
    ds.save_as(tmp_path / "dx.dcm")
    img = read_image(tmp_path / "dx.dcm")
    assert (
        img.geometry.spacing == (0.2, 0.25) and img.meta["spacing_source"] == "ImagerPixelSpacing"
    )


def test_radiograph_derived_round_trip_keeps_display(tmp_path, radiograph):
    path, img = radiograph
    perturbed = img.array.copy()
    perturbed[0, :100, :100] += 50.0
    out = write_image(perturbed, tmp_path / "adv.dcm", like=img, description="FGSM eps=0.01")
    ds = pydicom.dcmread(out)
    src = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    np.testing.assert_array_equal(ds.pixel_array, 32767 - perturbed[0])  # stored like the source
    assert ds.SOPInstanceUID != src.SOPInstanceUID and ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]  # the CR source has two values
    assert ds.DerivationDescription == "FGSM eps=0.01" and ds.SeriesDescription == "FGSM eps=0.01"
    assert ds.ImageComments == "FGSM eps=0.01"
    assert [ds.WindowCenter, ds.WindowWidth] == [src.WindowCenter, src.WindowWidth]
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    back = read_image(out)
    np.testing.assert_array_equal(back.array, perturbed)
    assert back.meta["window"] == img.meta["window"]


def test_radiograph_to_png_keeps_levels(tmp_path, radiograph):
    _, img = radiograph
    import imageio.v3 as iio

    out = write_image(img.array, tmp_path / "cr.png", like=img)
    png = iio.imread(out)
    assert png.dtype == np.uint16
    np.testing.assert_array_equal(png, img.array[0])  # lo = 0, step 1: levels = values


def test_clipping_is_reported(tmp_path):
    img = read_image(pydicom_file("MR_small.dcm"))
    too_big = img.array.copy()
    too_big[0, 0, 0] = 1e6
    with pytest.warns(UserWarning, match="1 value"):
        out = write_image(too_big, tmp_path / "clip.dcm", like=img)
    assert read_image(out).array[0, 0, 0] == 32767.0


def test_non_ascii_description_is_kept(tmp_path):
    img = read_image(pydicom_file("CT_small.dcm"))
    out = write_image(img.array + 1, tmp_path / "eps.dcm", like=img, description="FGSM ε=0.01")
    ds = pydicom.dcmread(out)
    assert ds.DerivationDescription == "FGSM ε=0.01" and ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.PatientName == img.meta["datasets"][0].PatientName


def test_big_endian_source_written_little_endian(tmp_path):
    img = read_image(pydicom_file("MR_small_bigendian.dcm"))
    ref = read_image(pydicom_file("MR_small.dcm"))
    np.testing.assert_array_equal(img.array, ref.array)
    back = read_image(write_image(img.array + 1, tmp_path / "le.dcm", like=img))
    np.testing.assert_array_equal(back.array, img.array + 1)


def test_derived_false_refuses_changed_pixels(tmp_path):
    img = read_image(pydicom_file("MR_small.dcm"))
    out = write_image(
        img.array, tmp_path / "copy.dcm", like=img, description="format copy", derived=False
    )
    ds = pydicom.dcmread(out)
    assert ds.SOPInstanceUID != img.meta["datasets"][0].SOPInstanceUID  # new UIDs regardless
    with pytest.raises(InputFileError, match="derived=False but the pixels differ"):
        write_image(img.array + 1, tmp_path / "sneaky.dcm", like=img, derived=False)
    assert not (tmp_path / "sneaky.dcm").exists()


@pytest.mark.parametrize(
    "name, match",
    [
        ("JPEGLSNearLossless_08.dcm", "no decoder is installed"),
        ("MR_truncated.dcm", "truncated or corrupt"),
        ("rtdose.dcm", "multi-frame"),
        ("rtplan.dcm", "no image pixel data"),
        ("SC_rgb_small_odd.dcm", "colour DICOM"),
    ],
)
def test_bad_dicom_files(name, match):
    path = pydicom_file(name)
    if name.startswith("JPEGLS"):
        from pydicom.pixels import get_decoder

        if get_decoder(pydicom.uid.JPEGLSNearLossless).is_available:
            pytest.skip("a JPEG-LS decoder is installed here, so the file is readable")
    with pytest.raises(InputFileError, match=match) as err:
        read_image(path)
    assert name in str(err.value)


def test_corrupt_slice_in_series_is_named(tmp_path, ct_series):
    victim = ct_series["files"][2]
    victim.write_bytes(victim.read_bytes()[:-500])
    with pytest.raises(InputFileError, match=victim.name):
        read_image(ct_series["folder"])
