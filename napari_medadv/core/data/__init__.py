"""Data the demo runs on: deterministic phantom generators and where the shipped files live.

* :mod:`.glioma` — BraTS-style glioma MR cases (four contrasts + labels) from the MNI template;
* :mod:`.cxr` — chest radiographs with synthetic nodule/opacity findings from a real DICOM;
* :mod:`.seeds` — the seed ranges (held-out vs training) and per-purpose random streams;
* :mod:`.fields` — the smooth random fields both generators draw shapes and textures from;
* :mod:`.paths` — the ``sample_data`` folder and the demo weights.

Submodules are imported by name: the generators pull in scipy, while :mod:`.paths` and
:mod:`.seeds` stay light (model loading and the ``medadv`` start-up read them). Nothing here
imports napari, qtpy or magicgui.
"""
