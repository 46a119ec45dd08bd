"""Shared fixtures: tiny models trained inside the test session on synthetic tasks (seconds on CPU)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn


def _one_qt_binding() -> None:
    """Make pytest-qt use the Qt binding that qtpy (hence napari and the plugin) uses.

    Each picks on its own: qtpy honours ``QT_API`` and otherwise prefers PyQt5, pytest-qt honours
    ``PYTEST_QT_API`` and otherwise prefers PySide6. With more than one binding installed the GUI
    tests then ran two Qt libraries in one process (the QApplication from one, the widgets from the
    other): widgets failed and the process aborted. This runs when pytest loads this conftest,
    before pytest-qt's ``pytest_configure`` reads ``PYTEST_QT_API``.
    """
    if "QT_API" not in os.environ and "PYTEST_QT_API" in os.environ:
        os.environ["QT_API"] = os.environ["PYTEST_QT_API"]
    try:
        import qtpy
    except Exception:  # no Qt binding installed: the GUI tests cannot run, the others still do
        return
    if qtpy.API_NAME.lower() in ("pyqt5", "pyqt6", "pyside6"):  # those pytest-qt supports
        os.environ["PYTEST_QT_API"] = qtpy.API_NAME.lower()


_one_qt_binding()


def make_disk_batch(n: int, size: int = 32, generator: torch.Generator | None = None):
    """2-channel images with a disk (label 1) and a brighter core (label 2) on noise.

    Channel 0 sees the whole disk, channel 1 the core, on a different intensity scale
    (z-score-like vs. large positive values) to exercise per-channel ranges.
    """
    g = generator or torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    imgs = torch.empty(n, 2, size, size)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        cy, cx = (torch.rand(2, generator=g) * (size - 16) + 8).tolist()
        r = float(torch.rand(1, generator=g) * 5 + 5)
        d = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        disk, core = d < r, d < r / 2
        labels[i][disk] = 1
        labels[i][core] = 2
        imgs[i, 0] = disk.float() * 1.5 + 0.4 * torch.randn(size, size, generator=g)
        imgs[i, 1] = 100 + 40 * core.float() + 12 * torch.randn(size, size, generator=g)
    return imgs, labels


class Standardize(nn.Module):
    """Fixed per-channel normalisation inside the model, so inputs keep their native scale."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


@pytest.fixture(scope="session")
def seg_model():
    """A small MONAI UNet trained for a few seconds to segment the disk task (Dice > 0.85)."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = nn.Sequential(
        Standardize([0.3, 105.0], [0.8, 20.0]),
        UNet(spatial_dims=2, in_channels=2, out_channels=3, channels=(8, 16, 32), strides=(2, 2), num_res_units=1),
    )
    x, y = make_disk_batch(192, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for epoch in range(12):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 32):
            idx = perm[i : i + 32]
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    for p in net.parameters():
        p.grad = None
    return net


@pytest.fixture(scope="session")
def seg_data():
    return make_disk_batch(4, generator=torch.Generator().manual_seed(123))


class TinyClassifier(nn.Module):
    def __init__(self, in_channels=3, n_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(8), nn.Dropout(0.2),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(16, n_classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


@pytest.fixture
def classifier():
    torch.manual_seed(0)
    return TinyClassifier()
