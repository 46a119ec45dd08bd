"""Regenerate docs/images/orientation.png: the glioma sample in the radiological axial view
with the orientation letters and the Orientation dock, on a 1920 x 1080 screen.

    xvfb-run -a -s "-screen 0 1920x1080x24" python docs/orientation_screenshot.py

The FLAIR is shown twice, as shipped (RAS) and re-stored LAS (x flipped, as many DICOM
conversions write it), in napari's grid: both show the left-hemisphere tumour on screen
right, next to the 'L' marker.
"""

import tempfile
import time
from pathlib import Path

import nibabel as nib
import napari
from _screenshot import save_window
from napari._qt.qt_event_loop import get_qapp
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from napari_medadv._qt.compat import grid
from napari_medadv._qt.demo import axial_view, fit_window_to_screen
from napari_medadv._qt.orientation import OrientationWidget
from napari_medadv.core.data.paths import sample_data_dir


def _as_las(path: Path, out: Path) -> Path:
    img = nib.load(str(path))
    t = ornt_transform(io_orientation(img.affine), axcodes2ornt(("L", "A", "S")))
    data = apply_orientation(img.get_fdata(dtype="float32"), t)
    nib.save(nib.Nifti1Image(data, img.affine @ inv_ornt_aff(t, img.shape)), str(out))
    return out


def main() -> None:
    app = get_qapp()
    viewer = napari.Viewer(title="napari-medadv — orientation: radiological axial view")
    fit_window_to_screen(viewer, fraction=0.7)
    case = sample_data_dir() / "glioma" / "glioma_001"
    viewer.open(str(case / "glioma_001_flair.nii.gz"), plugin="napari-medadv")
    viewer.layers[-1].name = "stored RAS"
    las = _as_las(case / "glioma_001_flair.nii.gz", Path(tempfile.mkdtemp()) / "glioma_001_flair_LAS.nii.gz")
    viewer.open(str(las), plugin="napari-medadv")
    viewer.layers[-1].name = "stored LAS"
    for lyr in viewer.layers:
        lyr.name_overlay.visible = True  # each grid cell says which file it is
    widget = OrientationWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Orientation (napari-medadv)", area="right")
    seg = nib.load(str(case / "glioma_001_seg.nii.gz"))
    labels = viewer.add_labels(seg.get_fdata().astype("int32"), affine=seg.affine, name="tumour", visible=False)
    axial_view(viewer, labels)  # centred on the tumour, radiological
    viewer.layers.remove(labels)
    viewer.status = ""
    g = grid(viewer)
    g.enabled = True
    g.stride = 1
    for _ in range(40):
        app.processEvents()
        time.sleep(0.05)
    viewer.reset_view()
    out = save_window(app, viewer, Path(__file__).parent / "images" / "orientation.png")
    print(f"wrote {out}; letters: {widget.markers.texts()}")


if __name__ == "__main__":
    main()
