"""GUI benchmarks (napari under Xvfb or a desktop); prints ratios measured in one run.

    xvfb-run -a python benchmarks/bench_gui.py [--updates 1000] [--device cpu]
    xvfb-run -a python benchmarks/bench_gui.py --case brats-size   # 4×240×240×155, 1 mm, int16
    xvfb-run -a python benchmarks/bench_gui.py --case cxr-full     # 1955×1841 radiograph

``--case phantoms`` (default) runs the three measures below on the shipped phantoms; the real-size
cases (generated offline, as ``benchmarks/bench_real_size.py`` does) print the live-at-real-size
table instead: live ε images on screen ÷ one forward, readouts (all but SSIM) shown ÷ one forward,
SSIM shown ÷ one forward, i-FGSM 3 steps from the Attack dock ÷ the same attack in the core, and
the longest event-loop stall in a first run and a re-run; ``--only session`` times five dock runs
5 s apart in one viewer, with the page faults each took (``--give-back always``: the torch lane's
memory policy before the seventh session, for comparison).

1. live ε: latency from a slider move to the adversarial image + segmentation on the layers,
   divided by the time of one forward pass of the same model on the same input (goal ≤ 1.15),
   on the 2-D chest radiograph (demo:cxr) and the 3-D glioma case (demo:unet3d);
2. the longest Qt event-loop stall while a 3-D i-FGSM runs in its worker, measured with a 10 ms
   heartbeat QTimer (goal ≤ 100 ms);
3. resident memory growth over N live-ε slider updates (2-D, each update waited for; goal < 5 %),
   after 50 warm-up updates.

Medians over repeated measurements; nothing here asserts a time (see tests/gui for behaviour).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def _wait(app, cond, timeout=600.0):
    """Run the Qt event loop until ``cond()``, idle between events as ``napari.run()`` is (a loop of
    processEvents + sleep keeps a core busy and slows the workers it measures on 2 cores)."""
    from qtpy.QtCore import QEventLoop, QTimer

    wake = QTimer()
    wake.setInterval(int(os.environ.get("WAKE_MS", "5")))  # check cond() at least every 5 ms
    wake.start()
    t0 = time.perf_counter()
    try:
        while not cond():
            app.processEvents(QEventLoop.AllEvents | QEventLoop.WaitForMoreEvents)
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError("benchmark step timed out")
    finally:
        wake.stop()


def _viewer_with_docks(image, model):
    import napari

    from napari_medadv._qt.attack import AttackWidget
    from napari_medadv._qt.layers import layer_data_for_image
    from napari_medadv._qt.readouts_widget import ReadoutsWidget

    viewer = napari.Viewer(show=True)
    for data, kw, kind in layer_data_for_image(image):
        getattr(viewer, f"add_{kind}")(data, **kw)
    from napari_medadv._qt.docking import placed

    aw = placed(AttackWidget(viewer))  # both docks on screen, one above the other (not tabbed)
    rw = placed(ReadoutsWidget(viewer))
    viewer.window.add_dock_widget(aw, name="Attack")
    viewer.window.add_dock_widget(rw, name="Readouts")
    aw.session.set_model(model)
    from qtpy.QtWidgets import QApplication

    t_end = time.perf_counter() + 0.5  # the viewer up and idle, as a user sees it before any click
    _wait(QApplication.instance(), lambda: time.perf_counter() > t_end)
    return viewer, aw


def _lane(fn, *args, **kwargs):
    """``fn`` on the viewer's torch lane, waited for: the references (one forward, the core attack)
    run where the docks' work runs, and the Qt thread never starts a second OpenMP team (which
    would slow every thread's small ops, see :mod:`napari_medadv._qt.lane`)."""
    from napari_medadv._qt.lane import LANE

    return LANE.call(fn, *args, **kwargs)


def _forward_time(model, image, repeats: int) -> float:
    from napari_medadv.core.pipeline import model_input

    x = model_input(image, model)
    model.forward(x)  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = model.forward(x)
        if out.is_cuda:
            import torch

            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _live_ready(app, aw, eps: float) -> None:
    aw.set_attack("fgsm", eps=eps)
    aw.live.setChecked(True)
    _wait(app, lambda: aw.session.shown is not None and bool(aw.session.shown.outcome.metrics) and not aw.running)


def bench_live(app, label: str, image, model, repeats: int) -> float:
    viewer, aw = _viewer_with_docks(image, model)
    _live_ready(app, aw, 0.01)
    lat = []
    for i in range(repeats):
        eps = 0.02 + 0.01 * (i % 5)
        if abs(aw.eps() - eps) < 1e-9:
            eps += 0.005
        aw.last_live_latency = None
        aw.set_eps(eps)  # what a slider move does (debounce timer, then one job)
        _wait(app, lambda: aw.last_live_latency is not None)
        lat.append(aw.last_live_latency)  # from the debounced submit: the 10 ms debounce is deliberate
        _wait(app, lambda: not aw.running)  # let the readouts finish before the next move
    fwd = _lane(_forward_time, model, image, repeats)
    ratio = statistics.median(lat) / fwd
    print(f"live ε {label}: update {1000 * statistics.median(lat):.1f} ms (median of {repeats}), "
          f"one forward {1000 * fwd:.1f} ms -> ratio {ratio:.2f} (goal <= 1.15)")
    aw.cancel()
    _wait(app, lambda: not aw.running)
    viewer.close()
    return ratio


def bench_stall(app, image, model, steps: int) -> tuple[float, float]:
    """Two runs in one viewer: the first creates the result layers (napari builds each layer and
    its controls on the GUI thread, one per event-loop turn), the second updates them in place."""
    from qtpy.QtCore import QTimer

    viewer, aw = _viewer_with_docks(image, model)
    aw.set_attack("ifgsm", eps=0.03, steps=steps)
    out = []
    for run in ("first run (creates 11 result layers)", "re-run (layers updated in place)"):
        gaps: list[float] = []
        at: list[float] = []
        t_start = [time.perf_counter()]
        last = [time.perf_counter()]

        def beat():
            now = time.perf_counter()
            gaps.append(now - last[0])
            at.append(now - t_start[0])
            last[0] = now

        timer = QTimer()
        timer.setInterval(10)
        timer.timeout.connect(beat)
        job = aw.run()
        t_start[0] = last[0] = time.perf_counter()
        done_at: list[float] = []
        job.worker.returned.connect(lambda *_: done_at.append(time.perf_counter() - t_start[0]))
        timer.start()
        _wait(app, lambda: not (job.running or aw.running))  # the event loop, as napari.run() runs it
        timer.stop()
        secs = time.perf_counter() - t_start[0]
        before = [g for g, t in zip(gaps, at) if not done_at or t <= done_at[0]]
        stall = max(gaps) - 0.010 if gaps else float("nan")
        stall_compute = max(before) - 0.010 if before else float("nan")
        worst = sorted(zip(gaps, at), reverse=True)[:3]
        print(f"event loop during 3-D i-FGSM, {run} ({steps} steps, {secs:.1f} s, {len(gaps)} heartbeats): "
              f"max stall {1000 * stall:.0f} ms overall, {1000 * stall_compute:.0f} ms while computing "
              f"(goal <= 100 ms); longest gaps end at "
              + ", ".join(f"{t:.2f} s ({1000 * g:.0f} ms)" for g, t in worst)
              + (f"; result delivered at {done_at[0]:.2f} s" if done_at else ""))
        out.append(stall)
    viewer.close()
    return out[0], out[1]


def bench_live_readouts(app, label: str, image, model, repeats: int) -> None:
    """Slider move -> images, readouts (all but SSIM) and SSIM on screen, each ÷ one forward."""
    viewer, aw = _viewer_with_docks(image, model)
    t0 = time.perf_counter()
    _live_ready(app, aw, 0.01)
    prep = time.perf_counter() - t0
    live = aw.live_eps
    img, rd, ss = [], [], []
    for i in range(repeats):
        eps = 0.02 + 0.01 * (i % 5)
        if abs(aw.eps() - eps) < 1e-9:
            eps += 0.005
        live.last_latency = live.last_readouts_latency = live.last_ssim_latency = None
        aw.set_eps(eps)
        _wait(app, lambda: live.last_ssim_latency is not None and not aw.running)
        img.append(live.last_latency)
        rd.append(live.last_readouts_latency)
        ss.append(live.last_ssim_latency)
    fwd = _lane(_forward_time, model, image, max(3, repeats // 2))
    m = statistics.median
    print(f"live ε {label}: one forward {1000 * fwd:.0f} ms; images on screen {1000 * m(img):.0f} ms -> "
          f"{m(img) / fwd:.2f} (goal <= 1.15); readouts {1000 * m(rd):.0f} ms -> {m(rd) / fwd:.2f} "
          f"(goal <= 1.40); SSIM (after, in the background) {1000 * m(ss):.0f} ms -> {m(ss) / fwd:.2f}; "
          f"first gradient sign + first frame {prep:.1f} s ({repeats} moves, medians)")
    aw.cancel()
    _wait(app, lambda: not aw.running)
    viewer.close()


def bench_dock_vs_core(app, image, model, steps: int, repeats: int = 2, pause: float = 5.0) -> float:
    """i-FGSM from the Attack dock (Run until the layers are on screen) ÷ the same attack in the
    core: a first run in a new viewer (it creates the result layers), a re-run in the same viewer
    (it updates them in place) and a re-run after ``pause`` seconds of the viewer idle, as a user
    looking at the result (the torch lane may give the heap's free memory back then:
    ``_qt/lane.py``); ``repeats`` interleaved rounds (core, dock first run, re-run, re-run after the
    pause, core, …), the ratios of the medians: one pair varies by ±15 % on 2 cores."""
    from napari_medadv.core.pipeline import run_attack

    first, again, paused, core = [], [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _lane(run_attack, image, model, "ifgsm", params={"eps": 0.03, "steps": steps}, labels=image.labels,
              seed=0)
        core.append(time.perf_counter() - t0)
        viewer, aw = _viewer_with_docks(image, model)
        aw.set_attack("ifgsm", eps=0.03, steps=steps)
        for out in (first, again, paused):
            if out is paused:
                t_end = time.perf_counter() + pause
                _wait(app, lambda: time.perf_counter() > t_end)
            t0 = time.perf_counter()
            aw.run()
            _wait(app, lambda: not aw.running)
            out.append(time.perf_counter() - t0)
        viewer.close()
    m = statistics.median
    print(f"i-FGSM {steps} steps: Attack dock first run {m(first):.1f} s, re-run {m(again):.1f} s, re-run after "
          f"{pause:.0f} s idle {m(paused):.1f} s, core (run_attack) {m(core):.1f} s -> ratio {m(first) / m(core):.2f} "
          f"first run, {m(again) / m(core):.2f} re-run, {m(paused) / m(core):.2f} after the pause (goal <= 1.10; "
          f"medians of {repeats} interleaved rounds: "
          + ", ".join(f"{f:.1f}/{a:.1f}/{p:.1f}/{c:.1f}" for f, a, p, c in zip(first, again, paused, core)) + ")")
    return m(first) / m(core)


def bench_session(app, image, model, steps: int, runs: int = 5, pause: float = 5.0) -> None:
    """A user tuning an attack: ``runs`` dock runs in one viewer, ``pause`` seconds apart (the viewer
    idle, the result looked at), each run's time and the page faults it took (``getrusage``: pages
    the kernel zeroed for it), against one core run before."""
    import resource

    from napari_medadv.core.pipeline import run_attack

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    f0, t0 = faults(), time.perf_counter()
    _lane(run_attack, image, model, "ifgsm", params={"eps": 0.03, "steps": steps}, labels=image.labels, seed=0)
    core = time.perf_counter() - t0, faults() - f0
    viewer, aw = _viewer_with_docks(image, model)
    aw.set_attack("ifgsm", eps=0.03, steps=steps)
    done = []
    for i in range(runs):
        if i:
            t_end = time.perf_counter() + pause
            _wait(app, lambda: time.perf_counter() > t_end)
        f0, t0 = faults(), time.perf_counter()
        aw.run()
        _wait(app, lambda: not aw.running)
        done.append((time.perf_counter() - t0, faults() - f0))
    viewer.close()
    print(f"i-FGSM {steps} steps, {runs} dock runs {pause:.0f} s apart in one viewer: "
          + ", ".join(f"{t:.1f} s ({n / 1e6:.2f} M faults)" for t, n in done)
          + f"; core run before {core[0]:.1f} s ({core[1] / 1e6:.2f} M faults)")


def _forward_backward_time(model, image, repeats: int) -> float:
    """One forward + backward of the attack loss w.r.t. the input (what one attack step costs)."""
    import torch

    from napari_medadv.core.losses import make_loss
    from napari_medadv.core.pipeline import model_input

    x = model_input(image, model)
    ts = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        xr = x.detach().clone().requires_grad_(True)
        out = model.module(xr)
        ref = out.detach().argmax(1)
        loss = make_loss(None, out, ref, model.activation())(out, ref).sum()
        (g,) = torch.autograd.grad(loss, xr)
        if g.is_cuda:
            torch.cuda.synchronize()
        if i:  # the first is a warm-up
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_iterative_live(app, label: str, image, model, repeats: int) -> None:
    """Live ε for ti-FGSM and PGD: slider move -> first frame on screen ÷ one forward+backward,
    the longest event-loop stall meanwhile, and scrubbing over cached ε ÷ one layer update."""
    from qtpy.QtCore import QTimer

    from napari_medadv._qt.results import show_outcome

    fb = _lane(_forward_backward_time, model, image, 3)
    for attack, params in (("tifgsm", {"steps": 5}), ("pgd", {"steps": 5})):
        viewer, aw = _viewer_with_docks(image, model)
        li = aw.live_iter
        aw.set_attack(attack, eps=0.02, **params)
        aw.live.setChecked(True)
        _wait(app, lambda: aw.session.shown is not None and not aw.running)  # the first (cold) result
        li.cancel()  # no background fill while measuring
        _wait(app, lambda: not li.busy)
        lat, gaps = [], []
        last = [time.perf_counter()]

        def beat():
            now = time.perf_counter()
            gaps.append(now - last[0])
            last[0] = now

        timer = QTimer()
        timer.setInterval(10)
        timer.timeout.connect(beat)
        timer.start()
        for i in range(repeats):
            li.last_latency = None
            aw.set_eps(0.025 + 0.005 * i)  # never cached: a warm run, its first frame measured
            _wait(app, lambda: li.last_latency is not None)
            lat.append(li.last_latency)
            li.cancel()
            _wait(app, lambda: not li.busy and not aw.running)
        timer.stop()
        stall = max(gaps) - 0.010
        # scrubbing: every ε above was stopped early (not cached); cache three finished ones, then
        # alternate a slider move onto one (measured from the move) with putting another cached
        # result on the layers directly (one layer update: what a move over cached ε must cost),
        # each time a different result than the one on screen, so both really update the layers
        values = (0.03, 0.04, 0.05)
        for e in values:
            li._halted = False
            aw.set_eps(e)
            _wait(app, lambda: li.cache.get(li.full_key(), e) is not None and not aw.running)
        li.cancel()  # no background fill while measuring
        _wait(app, lambda: not li.busy)
        scrub, upd = [], []
        src = li._context()[0]
        for k in range(2 * max(repeats, 10)):  # cheap: more pairs steady the medians
            e = values[k % 3]
            if k % 2 == 0:
                li.last_latency = None
                aw.set_eps(e)
                _wait(app, lambda: li.last_latency is not None and not aw.running)
                scrub.append(li.last_latency)
            else:  # after the same 10 ms of event loop as the slider's debounce gives a move (the
                # previous result drawn first: replacing layers not yet drawn is cheaper)
                cached = li.cache.get(li.full_key(), e)

                def update(cached=cached):
                    t0 = time.perf_counter()
                    show_outcome(viewer, src, cached, live=True)
                    upd.append(time.perf_counter() - t0)

                n = len(upd)
                QTimer.singleShot(10, update)
                _wait(app, lambda: len(upd) > n)
        li.cancel()
        _wait(app, lambda: not li.busy)
        viewer.close()
        m = statistics.median
        print(f"live ε {attack} {label}: first frame after a slider move {1000 * m(lat):.0f} ms, one forward+"
              f"backward {1000 * fb:.0f} ms -> {m(lat) / fb:.2f} (goal <= 1.2); longest stall {1000 * stall:.0f} ms "
              f"(goal <= 100); scrubbing over cached ε {1000 * m(scrub):.1f} ms vs one layer update "
              f"{1000 * m(upd):.1f} ms -> {m(scrub) / m(upd):.2f} (goal <= 1.2)")


def _real_size(case: str):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from dataclasses import replace

    from benchmarks.bench_real_size import brats_size_case, radiograph

    if case == "brats-size":
        image, labels = brats_size_case()
        return replace(image, labels=labels), "demo:unet3d", "BraTS-size 4×240×240×155 1 mm int16, demo:unet3d"
    return radiograph(), "demo:cxr", "radiograph 1955×1841, demo:cxr"


def bench_real_size(app, case: str, device: str, repeats: int, steps: int, only: str | None = None) -> None:
    from napari_medadv.core.models import load_model

    image, spec, label = _lane(_real_size, case)
    model = _lane(load_model, spec, device=device)
    if only in (None, "live"):
        bench_live_readouts(app, label, image, model, repeats)
    if case == "brats-size":
        if only in (None, "stall"):
            bench_dock_vs_core(app, image, model, steps)
            bench_stall(app, image, model, steps)
        if only in (None, "session"):
            bench_session(app, image, model, steps)
        if only in (None, "iterative"):
            bench_iterative_live(app, label, image, model, 3)


def bench_memory(app, image, model, updates: int) -> float:
    import psutil

    proc = psutil.Process(os.getpid())
    viewer, aw = _viewer_with_docks(image, model)
    _live_ready(app, aw, 0.01)

    def move(i):
        aw.last_live_latency = None
        value = 11 + (i % 89)  # 1.1 … 9.9 %, never the current value (no move, no update)
        if value == aw.eps_slider.value():
            value += 1
        aw.eps_slider.setValue(value)
        _wait(app, lambda: aw.last_live_latency is not None and not aw.running)

    for i in range(50):
        move(i)
    rss0 = proc.memory_info().rss
    t0 = time.perf_counter()
    for i in range(50, 50 + updates):
        move(i)
    rss1 = proc.memory_info().rss
    growth = (rss1 - rss0) / rss0
    print(f"memory over {updates} live-ε updates ({time.perf_counter() - t0:.0f} s): RSS {rss0 / 2**20:.0f} -> "
          f"{rss1 / 2**20:.0f} MiB, growth {100 * growth:.2f} % (goal < 5 %)")
    aw.cancel()
    viewer.close()
    return growth


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--steps", type=int, default=5, help="i-FGSM steps for the stall benchmark")
    p.add_argument("--updates", type=int, default=1000)
    p.add_argument("--only", choices=["live", "stall", "memory", "iterative", "session"],
                   help="session: BraTS size only (--case brats-size), five dock runs 5 s apart in one viewer")
    p.add_argument("--case", choices=["phantoms", "brats-size", "cxr-full"], default="phantoms")
    p.add_argument("--give-back", choices=["when-scarce", "always"], default="when-scarce",
                   help="when-scarce: the torch lane keeps the heap's free memory for the next job while the "
                        "system has plenty (what viewers do); always: gives it back once idle for a second "
                        "after every job (before the seventh session)")
    p.add_argument("--allocator", choices=["heap", "system"], default="heap",
                   help="heap: what medadv demo and napari-medadv set up (napari_medadv.core.allocator); "
                        "system: glibc's defaults (MEDADV_ALLOCATOR=system, or napari started on its own)")
    args = p.parse_args(argv)
    from napari_medadv.core.allocator import ENV, reuse_freed_memory

    os.environ[ENV] = args.allocator
    allocator = reuse_freed_memory()  # before napari and Qt start their threads

    if args.give_back == "always":
        from napari_medadv._qt import lane

        lane.worth_giving_back = lambda **kw: True
    from qtpy.QtWidgets import QApplication

    import napari  # noqa: F401  (creates the Qt application on first viewer)
    from napari_medadv._sample_data import chest_radiograph_path
    from napari_medadv.core.io import read_image
    from napari_medadv.core.models import load_model
    from napari_medadv.core.data.paths import sample_data_dir

    from napari._qt.qt_event_loop import get_qapp

    app = get_qapp()
    assert isinstance(app, QApplication)
    import torch

    print(f"napari-medadv GUI benchmarks: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {args.device}, Qt {os.environ.get('QT_API', 'default')}, {allocator}, memory given back "
          f"{args.give_back}", file=sys.stderr)
    if args.case != "phantoms":
        bench_real_size(app, args.case, args.device, min(args.repeats, 5), 3 if args.steps == 5 else args.steps,
                        args.only)
        return 0
    cxr = read_image(chest_radiograph_path())
    glioma = read_image(sample_data_dir() / "glioma" / "glioma_001")
    m_cxr = _lane(load_model, "demo:cxr", device=args.device)
    m_3d = _lane(load_model, "demo:unet3d", device=args.device)
    if args.only in (None, "live"):
        bench_live(app, "2-D (chest radiograph 256², demo:cxr)", cxr, m_cxr, args.repeats)
        bench_live(app, "3-D (glioma 4×64×80×64, demo:unet3d)", glioma, m_3d, args.repeats)
    if args.only in (None, "stall"):
        bench_stall(app, glioma, m_3d, args.steps)
    if args.only in (None, "iterative"):
        bench_iterative_live(app, "3-D (glioma 4×64×80×64, demo:unet3d)", glioma, m_3d, args.repeats)
    if args.only in (None, "memory"):
        bench_memory(app, cxr, m_cxr, args.updates)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
