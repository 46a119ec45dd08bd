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
stall then; 58 ms once deferred). Since the seventh session it does so only when the heap's free
memory is more than half of what the system still has available (:func:`worth_giving_back`); while
memory is plentiful it waits until the lane has been idle for half a minute, looking again every
second (memory may become scarce meanwhile). A trim gives back pages
that the next run faults in again (0.6-1 M faults per BraTS-size dock run, 3-6 s of kernel time on
this project's machine), and a user tuning an attack runs it again within seconds: five BraTS-size
dock runs 5 s apart in one viewer took 13.9, 15.9, 16.2, 16.9, 17.2 s with the trim after every run,
and 13.4, 14.2, 14.3, 10.5, 11.8 s with the memory kept (``benchmarks/bench_gui.py --case brats-size
--only session``; the heap's layout settles after a few runs; the core run takes 10-11 s). The
process then keeps its heap (8.5 GB after five BraTS-size runs on a 24 GB machine) until it has been
idle half a minute, or less once memory is scarce. napari started on its own (``napari``, then the
plugin's docks) keeps glibc's defaults: by then its threads have their arenas.

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
#: the heap's free memory goes back at once when it is more than this share of the system's available
#: memory (:func:`worth_giving_back`); otherwise the viewer keeps it a while for the next job
GIVE_BACK_SHARE = 0.5
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
    if not 0 <= int(trim_bytes) < 2**31:  # mallopt takes a C int: ctypes would wrap 64 GB to 0 silently
        raise ValueError(f"trim threshold {trim_bytes} bytes: glibc takes 0 to 2 GiB - 1")
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


class _MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2 (glibc >= 2.33)
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_free_bytes() -> int | None:
    """Bytes free inside the heap (glibc's ``mallinfo2().fordblks``): at most what :func:`give_back`
    can return (pages given back before and not used since count too). None without the heap set-up
    or without ``mallinfo2``."""
    if _done is None or not _done.startswith("glibc heap reuse"):
        return None
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return int(fn().fordblks)


def _cgroup_limits(root: str = "/sys/fs/cgroup", proc: str = "/proc/self/cgroup") -> list[tuple[str, str]]:
    """The process's memory limit and usage files (cgroup v2 and v1: a container's limit)."""
    pairs = []
    try:
        with open(proc) as f:
            lines = f.read().splitlines()
    except OSError:
        return pairs
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        path = path.strip().lstrip("/")
        if controllers == "":
            pairs.append((os.path.join(root, path, "memory.max"), os.path.join(root, path, "memory.current")))
        elif "memory" in controllers.split(","):
            folder = os.path.join(root, "memory", path)
            pairs.append((os.path.join(folder, "memory.limit_in_bytes"), os.path.join(folder, "memory.usage_in_bytes")))
    return pairs


def memory_available_bytes(meminfo: str = "/proc/meminfo", cgroup: str | None = None) -> int | None:
    """What the system can still give: Linux's ``MemAvailable``, or less where the process's control
    group (a container's memory limit, cgroup v2 or v1) leaves less; None where none of them says.
    ``cgroup``: a cgroup v2 folder to read instead of the process's own."""
    pairs = (_cgroup_limits() if cgroup is None else
             [(os.path.join(cgroup, "memory.max"), os.path.join(cgroup, "memory.current"))])
    found = []
    try:
        with open(meminfo) as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")][:1]
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in pairs:
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            if limit != "max":  # v1 says "no limit" with a huge number, which the minimum ignores
                with open(usage_file) as f:
                    found.append(max(0, int(limit) - int(f.read().strip())))
        except (OSError, ValueError):
            pass
    return min(found) if found else None


def worth_giving_back(share: float = GIVE_BACK_SHARE, free: int | None = None,
                      available: int | None = None) -> bool:
    """Whether the heap's free memory should go back to the system now rather than be kept for the
    next job: when it is more than ``share`` of what the system still has available (or when either
    figure is unknown). Keeping it spares the next job the page faults of memory given back (at BraTS
    size 0.6-1 M faults, 3-6 s of a 14 s dock run on this project's machine) while memory is
    plentiful; once memory is scarce it goes back at once."""
    free = heap_free_bytes() if free is None else free
    available = memory_available_bytes() if available is None else available
    if free is None or available is None:
        return True
    return free > share * available


def child_environ() -> dict[str, str]:
    """glibc's variables for the same heap set-up in a child process (a study's Dask worker
    processes: ``mallopt`` settings are not inherited, and glibc reads these before the child
    starts a thread); empty unless this process has it."""
    if _done is None or not _done.startswith("glibc heap reuse"):
        return {}
    return {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(_trim)}
