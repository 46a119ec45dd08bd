"""The headless engine: attacks, losses, metrics, I/O and models.

Nothing under ``napari_medadv.core`` may import napari, qtpy or magicgui (a test enforces it),
so the engine runs the same in the CLI, in a Dask worker and inside the napari plugin.
"""
