"""The engine must import without napari, qtpy or magicgui (and the package root without torch)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import napari_medadv

CORE = Path(napari_medadv.__file__).parent / "core"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_every_core_module_imports_with_gui_packages_blocked():
    modules = sorted(
        "napari_medadv." + ".".join(p.relative_to(CORE.parent).with_suffix("").parts).replace(".__init__", "")
        for p in CORE.rglob("*.py")
    )
    assert len(modules) > 10
    code = f"""
    import importlib, sys
    class Block:
        BLOCKED = ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6")
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.BLOCKED:
                raise ImportError("blocked GUI import: " + name)
            return None
    sys.meta_path.insert(0, Block())
    for m in {modules!r}:
        importlib.import_module(m)
    leaked = [m for m in sys.modules if m.split(".")[0] in Block.BLOCKED]
    assert not leaked, leaked
    print("ok", len({modules!r}))
    """
    res = _run(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok")


def test_package_root_is_light():
    res = _run("""
    import sys, napari_medadv
    heavy = [m for m in ("torch", "napari", "qtpy", "monai") if m in sys.modules]
    assert not heavy, heavy
    print(napari_medadv.__version__)
    """)
    assert res.returncode == 0, res.stderr
