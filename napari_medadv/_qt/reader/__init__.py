"""The Reader study dock: a blinded reader test of attacks and MR artifacts at matched PSNR
(set-up and trial panels, the blinded view, the cases). The engine is
:mod:`napari_medadv.core.reader`."""

from .widget import ReaderStudyWidget

__all__ = ["ReaderStudyWidget"]
