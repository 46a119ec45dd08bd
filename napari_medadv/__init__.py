"""napari-medadv: live adversarial-robustness explorer for medical imaging models.

Importing the package must stay cheap: no Qt, no torch. Everything heavy lives in
sub-modules (``napari_medadv.core`` for the engine, ``napari_medadv._qt`` for the GUI).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
