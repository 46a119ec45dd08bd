"""Training of the demo models and of their defended variants (``medadv train``).

* :mod:`.demo` — the demo models' configurations and :func:`train_demo` (phantoms in, weights +
  JSON out);
* :mod:`.defenses` — Liu et al.'s training-time defenses (distillation, FGSM adversarial training,
  noise augmentation) and :func:`train_defended`;
* :mod:`.loop` — the one optimiser loop, the batches it draws and the held-out scores.

Importing this package stays light (no monai, no scipy, no phantom generator) because
``medadv --help`` reads :data:`DEFENSES` and :data:`DEFAULTS` for its options.
"""

from .defenses import DEFAULTS, DEFENSES, defended_name, train_defended
from .demo import DEMO_CONFIGS, cxr_arrays, glioma_arrays, train_demo
from .loop import evaluate_cxr, evaluate_glioma

__all__ = [
    "DEFAULTS",
    "DEFENSES",
    "DEMO_CONFIGS",
    "cxr_arrays",
    "defended_name",
    "evaluate_cxr",
    "evaluate_glioma",
    "glioma_arrays",
    "train_defended",
    "train_demo",
]
