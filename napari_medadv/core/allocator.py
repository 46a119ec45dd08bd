"""The process's memory allocator, set up for PyTorch's large CPU tensors (Linux with glibc).

Why. glibc serves every allocation above its mmap threshold (32 MB at most) with a fresh ``mmap``
and gives it back with ``munmap`` when it is freed; the kernel zeroes each new page when it is
first touched. A 3-D attack at BraTS size (4×240×240×155) allocates and frees about 26 GB of such
tensors per i-FGSM run of 3 steps (6.4 M page faults), and zeroing them took 14-15 s of its 35 s
of CPU time (measured with ``getrusage``: system time). Keeping freed memory in the process's heap
for the next tensor removes that: the same run took 11.5-12.7 s instead of 18.5-19.6 s, with
1.4-3.4 s in the kernel instead of 14-16 s (``benchmarks/bench_allocator.py``). PyTorch's CPU build
has no caching allocator of its own to switch on, so this is done through glibc's ``mallopt``:

* ``M_MMAP_MAX = 0``: large blocks come from the heap, not from one ``mmap`` each;
* ``M_ARENA_MAX = 1``: every thread allocates from the main heap (a thread's own arena would still
  ``mmap`` blocks above 64 MB: the viewer's torch lane is a thread). Set before the first thread
  allocates, so the ``medadv`` commands call this first thing;
* ``M_TRIM_THRESHOLD = 1 GB``: free memory at the top of the heap beyond that goes back to the
  system, so an idle process does not keep its whole peak (with 256 MB, a second dock run at
  BraTS size, whose first result stays on the layers, spent 8 s in the kernel again).

The price is memory: after a BraTS-size attack the process keeps about 1.7 GB more than with the
system defaults (freed blocks wait in the heap for reuse), and its peak is 1.4× higher (4.5 instead
of 3.2 GB: blocks that cannot be split or merged as the sizes change).

A viewer (``medadv demo``, ``napari-medadv``) gets it too, since the sixth session: one BraTS-size
dock run took 13.4-15.3 s instead of 19-21 s. Its results stay on the layers between runs, in the
one heap among the temporaries, and the holes they leave would not go back to the system (over four
BraTS-size dock runs in two viewers the resident memory grew to 9.4 GB, against 3 GB with glibc's
defaults), so the torch lane calls :func:`give_back` once it has been idle for a second after a job
(``malloc_trim``: the free pages inside the heap go back too, 0.1-0.25 s at BraTS size): over those
four runs the resident memory stayed at 2.7-3.6 GB, and over 1000 live-ε updates it grew 2.1 % (0.2 %
with the defaults; the goal is 5 %). Not right after the job: the trim holds the one arena's lock and
the Qt thread's own allocations wait for it (a 4 kB ``malloc`` on another thread waited 122 ms behind
a 129 ms trim), and right after a job the Qt thread is putting its result on the layers (a 134 ms
stall then; 58 ms once deferred). napari started on its own (``napari``, then the plugin's docks)
keeps glibc's defaults: by then its threads have their arenas.

``MEDADV_ALLOCATOR=system`` keeps glibc's defaults everywhere. Settings the user made with glibc's own
variables (``MALLOC_*``, ``GLIBC_TUNABLES``) are left alone. A study's local Dask worker processes start
with the same set-up (:func:`child_environ`). Nothing happens elsewhere (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
TRIM_BYTES = 2**30
ENV = "MEDADV_ALLOCATOR"

_done: str | None = None
_trim = TRIM_BYTES


def user_settings() -> list[str]:
    """glibc allocator variables the user set (then left alone)."""
    names = [k for k in os.environ if k.startswith("MALLOC_")]
    if "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        names.append("GLIBC_TUNABLES")
    return sorted(names)


def reuse_freed_memory(trim_bytes: int = TRIM_BYTES) -> str:
    """Set glibc up to reuse freed large blocks (see the module docstring); returns what was done,
    or why nothing was. Call it before the process starts a thread. Safe to call more than once
    (only the first call acts)."""
    global _done, _trim
    if _done is not None:
        return _done
    choice = os.environ.get(ENV, "").lower()
    if choice == "system":
        _done = f"system allocator ({ENV}=system)"
    elif not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        _done = "system allocator (not glibc)"
    elif user_settings():
        _done = "system allocator with the user's settings (" + ", ".join(user_settings()) + ")"
    else:
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            _done = "system allocator (mallopt not found)"
        else:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            results = [mallopt(param, value) for param, value in (
                (M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, int(trim_bytes)))]
            ok = all(r == 1 for r in results)
            _trim = int(trim_bytes)
            _done = (f"glibc heap reuse (one arena, no mmap blocks, trim above {trim_bytes // 2**20} MB)" if ok
                     else "system allocator (mallopt refused a setting)")
    return _done


def give_back() -> bool:
    """With the heap set up (:func:`reuse_freed_memory`), give its free pages back to the system
    (``malloc_trim(0)``: the holes between live blocks too, not only the top); True when memory was
    returned. A no-op otherwise. Call it when a long piece of work is over, not between steps."""
    if _done is None or not _done.startswith("glibc heap reuse"):
        return False
    trim = ctypes.CDLL(None).malloc_trim
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))


def child_environ() -> dict[str, str]:
    """glibc's variables for the same heap set-up in a child process (a study's Dask worker
    processes: ``mallopt`` settings are not inherited, and glibc reads these before the child
    starts a thread); empty unless this process has it."""
    if _done is None or not _done.startswith("glibc heap reuse"):
        return {}
    return {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(_trim)}
