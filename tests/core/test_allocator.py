"""The allocator set-up of the ``medadv`` commands (napari_medadv.core.allocator): freed large blocks
are reused instead of mapped afresh (whose pages the kernel zeroes again), and the user's own
settings or ``MEDADV_ALLOCATOR=system`` are respected. Each case runs in a child process: the
settings hold for a whole process, and the test process keeps glibc's defaults."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest



def _glibc_with_mallinfo2() -> bool:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    return hasattr(ctypes.CDLL(None), "mallinfo2")  # glibc >= 2.33


pytestmark = pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="glibc's allocator (>= 2.33) only")

CHILD = r"""
import ctypes, json, threading
import torch
from napari_medadv.core.allocator import reuse_freed_memory
done = reuse_freed_memory()
again = reuse_freed_memory()
out = {"done": done, "again": again}

class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Info
def work():
    n = 200 * 2**20 // 4  # a 200 MB tensor: above glibc's largest mmap threshold
    a = torch.ones(n)
    out["mapped_mb"] = mallinfo2().hblkhd / 2**20  # in blocks of their own (mmap), given back when freed
    del a
    out["kept_free_mb"] = mallinfo2().fordblks / 2**20  # free in the heap, for the next tensor
    from napari_medadv.core.allocator import heap_free_bytes
    out["reported_free_mb"] = (heap_free_bytes() or 0) / 2**20
t = threading.Thread(target=work); t.start(); t.join()  # a thread, as the viewer's torch lane
print("RESULT " + json.dumps(out))
"""


def _child(**env) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "MEDADV_ALLOCATOR"}
    base.pop("GLIBC_TUNABLES", None)
    p = subprocess.run([sys.executable, "-c", CHILD], env={**base, **env}, text=True, capture_output=True,
                       check=True, timeout=120)
    return json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])


def test_freed_large_blocks_are_reused_not_mapped_afresh():
    r = _child()
    assert r["done"].startswith("glibc heap reuse") and r["again"] == r["done"]
    assert r["mapped_mb"] < 100 and r["kept_free_mb"] >= 200, r  # from the heap, and kept there once freed
    assert abs(r["reported_free_mb"] - r["kept_free_mb"]) < 1, r  # what worth_giving_back weighs


def test_system_setting_keeps_glibc_defaults():
    r = _child(MEDADV_ALLOCATOR="system")
    assert r["done"] == "system allocator (MEDADV_ALLOCATOR=system)"
    assert r["reported_free_mb"] == 0, r  # no heap of ours to weigh
    assert r["mapped_mb"] >= 200 and r["kept_free_mb"] < 200, r  # mapped afresh, returned when freed


def test_the_users_own_glibc_settings_are_left_alone():
    r = _child(MALLOC_ARENA_MAX="4")
    assert r["done"] == "system allocator with the user's settings (MALLOC_ARENA_MAX)"
    assert r["mapped_mb"] >= 200, r
    r = _child(GLIBC_TUNABLES="glibc.malloc.mmap_max=0")
    assert "GLIBC_TUNABLES" in r["done"]


GIVE_BACK = r"""
import json, os
import torch
from napari_medadv.core.allocator import give_back, reuse_freed_memory
out = {"before": give_back()}  # the system allocator: nothing to do
out["done"] = reuse_freed_memory()
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
a = torch.ones(300 * 2**20 // 4)  # 300 MB, touched
b = torch.ones(10)  # after it in the heap: the block freed below is a hole, not the top
del a
out["kept_mb"] = rss_mb()
out["returned"] = give_back()
out["after_mb"] = rss_mb()
print("RESULT " + json.dumps(out))
"""


def test_give_back_returns_the_heaps_free_pages():
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "MEDADV_ALLOCATOR"}
    p = subprocess.run([sys.executable, "-c", GIVE_BACK], env=base, text=True, capture_output=True, check=True,
                       timeout=120)
    r = json.loads(p.stdout.split("RESULT ")[-1])
    assert r["before"] is False and r["done"].startswith("glibc heap reuse")
    assert r["returned"] is True and r["kept_mb"] - r["after_mb"] > 250, r


def test_the_commands_set_it_up_first():
    """``python -m napari_medadv.cli`` (as the console scripts) goes through ``entry``."""
    code = ("import sys, napari_medadv.core.allocator as a, napari_medadv.cli as c\n"
            "c.main = lambda argv=None: print('ALLOC', a._done) or 0\n"
            "sys.argv[1:] = {argv!r}\n"
            "sys.exit(c.entry())")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "MEDADV_ALLOCATOR"}
    env["DISPLAY"] = ":99"  # `medadv demo` would open a window: a viewer
    for argv, expected in ((["attack", "x.nii"], "ALLOC glibc heap reuse"),
                           (["demo", "--headless"], "ALLOC glibc heap reuse"),
                           (["demo"], "ALLOC glibc heap reuse")):  # a viewer too (the lane gives back)
        p = subprocess.run([sys.executable, "-c", code.format(argv=argv)], text=True, capture_output=True,
                           check=True, timeout=120, env=env)
        assert expected in p.stdout, (argv, p.stdout)
    import tomllib
    from pathlib import Path

    scripts = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"medadv": "napari_medadv.cli:entry", "napari-medadv": "napari_medadv._qt.demo:entry"}


def test_the_heaps_free_memory_goes_back_at_once_only_when_memory_is_scarce(tmp_path, monkeypatch):
    from napari_medadv.core import allocator
    from napari_medadv.core.allocator import GIVE_BACK_SHARE, memory_available_bytes, worth_giving_back

    gb = 2**30
    assert not worth_giving_back(free=3 * gb, available=20 * gb)  # plenty left: kept for the next run
    assert worth_giving_back(free=5 * gb, available=8 * gb)  # more than half of what is left
    assert worth_giving_back(free=int(GIVE_BACK_SHARE * 8 * gb) + 1, available=8 * gb)
    assert not worth_giving_back(free=int(GIVE_BACK_SHARE * 8 * gb), available=8 * gb)
    meminfo, cgroup = tmp_path / "meminfo", tmp_path / "cgroup"
    cgroup.mkdir()
    meminfo.write_text("MemTotal:       24576000 kB\nMemFree:         1000 kB\nMemAvailable:   20971520 kB\n")
    assert memory_available_bytes(str(meminfo), str(cgroup)) == 20 * gb
    (cgroup / "memory.max").write_text("max\n")  # a control group without a limit
    assert memory_available_bytes(str(meminfo), str(cgroup)) == 20 * gb
    (cgroup / "memory.max").write_text(f"{16 * gb}\n")  # a container limited to 16 GB, 10 GB in use
    (cgroup / "memory.current").write_text(f"{10 * gb}\n")
    assert memory_available_bytes(str(meminfo), str(cgroup)) == 6 * gb
    meminfo.write_text("MemTotal:       24576000 kB\n")  # an old kernel: the limit alone
    assert memory_available_bytes(str(meminfo), str(cgroup)) == 6 * gb
    proc = tmp_path / "cgroup_of_self"  # a hybrid hierarchy: cgroup v1's memory controller, and v2
    proc.write_text("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    assert allocator._cgroup_limits("/cg", str(proc)) == [
        ("/cg/memory/docker/abc/memory.limit_in_bytes", "/cg/memory/docker/abc/memory.usage_in_bytes"),
        ("/cg/memory.max", "/cg/memory.current")]
    missing = str(tmp_path / "missing")
    assert memory_available_bytes(str(meminfo), missing) is None  # unknown: memory goes back
    assert memory_available_bytes(missing, missing) is None
    monkeypatch.setattr(allocator, "memory_available_bytes", lambda: None)
    assert worth_giving_back(free=gb)  # what is available unknown: given back
    monkeypatch.setattr(allocator, "heap_free_bytes", lambda: None)
    assert worth_giving_back(available=20 * gb)  # no heap figure (glibc < 2.33): given back, as before


def test_a_trim_threshold_beyond_glibcs_int_is_refused():
    from napari_medadv.core.allocator import reuse_freed_memory

    with pytest.raises(ValueError, match="2 GiB"):
        reuse_freed_memory(64 * 2**30)  # ctypes would wrap it to 0: trimming at every free
