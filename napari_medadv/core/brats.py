"""The BraTS conventions in one place (no imports beyond the standard library, so the phantom
generator and the readers can share them without pulling in anything heavy).

Classic BraTS (2017-2021) labels: 0 background, 1 necrotic/non-enhancing core (NCR/NET),
2 peritumoural oedema (ED), 4 enhancing tumour (ET); BraTS 2023 files use 3 for ET and the
contrast suffixes t1n/t1c/t2w/t2f, read here as the classic names. Tumour regions (Liu et al.
2021; the MONAI BraTS bundle's sigmoid outputs, in the order TC, WT, ET): WT = {1, 2, 4},
TC = {1, 4}, ET = {4}.
"""

from __future__ import annotations

#: the four MR contrasts of a BraTS case, in the order the readers stack them
BRATS_CHANNELS = ("t1", "t1ce", "t2", "flair")
#: BraTS 2023 file suffixes -> the classic channel names
BRATS_2023_NAMES = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair"}
#: classic label values
BRATS_LABELS = (0, 1, 2, 4)
#: what each foreground label marks
BRATS_LABEL_NAMES = {1: "NCR/NET", 2: "ED", 4: "ET"}
#: tumour regions as unions of labels
BRATS_REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
#: the MONAI BraTS bundle's sigmoid output channels, in order
BRATS_REGION_NAMES = ("TC", "WT", "ET")
