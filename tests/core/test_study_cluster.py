"""Studies on clusters: paths that travel to workers started elsewhere, a worker that cannot read
the data named, GPU workers (the ``GPU=1`` resource, on CPU), models loaded once per worker, faults
survived (a worker killed mid-study, an interrupted client, a case raising on every try) and a real
single-node SLURM through ``medadv study --cluster slurm``. Every run is compared with the
sequential run of the same study on the shipped glioma cases."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pandas as pd
import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import _slurm  # noqa: E402
import _tiny_models  # noqa: E402

from napari_medadv.cli import main  # noqa: E402
from napari_medadv.core import study as ST  # noqa: E402
from napari_medadv.core.errors import MedadvError  # noqa: E402
from napari_medadv.core.study.cluster import ClusterSpec, gpu_index, jobqueue_cluster  # noqa: E402

# worker processes cannot import this module (tests/ is not on their path): send its functions by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])

GRID = [{"attack": "fgsm", "eps": [0.05]}, {"attack": "ifgsm", "eps": [0.05], "steps": 2}]
KEY = ["case", "source", "target", "grid_key"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[str]:
    """Two tiny TorchScript segmenters (files every worker process can load)."""
    d = tmp_path_factory.mktemp("models")
    return [f"torchscript:{_tiny_models.save_torchscript(d, v)}" for v in (0, 1)]


@pytest.fixture(scope="module")
def glioma(tmp_path_factory) -> Path:
    """The four shipped glioma cases, cropped to 24^3 around the tumour (cheap to attack)."""
    return _tiny_models.make_small_cases(tmp_path_factory.mktemp("data") / "glioma",
                                         names=tuple(f"glioma_00{i}" for i in range(1, 5)), size=24)


def _config(models, dataset, **kw) -> ST.StudyConfig:
    base = dict(dataset=str(dataset), models=models, grid=GRID, seed=5,
                transfer=True, trust_model_code=True)
    return ST.StudyConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def sequential(models, glioma, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seq")
    res = ST.Study(_config(models, glioma), out).run(workers=0, report=False)
    assert res.n_run == 4
    return out


def _rows(out) -> pd.DataFrame:
    return ST.load_rows(out)[0].drop(columns="seconds").sort_values(KEY).reset_index(drop=True)


def _assert_same_numbers(out, ref):
    a, b = _rows(out), _rows(ref)
    assert not a.duplicated(KEY).any(), "a case's rows are in the results twice"
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6, atol=1e-9)


def _stored(out) -> dict:
    return {f.stem: json.loads(f.read_text()) for f in (Path(out) / "cases").glob("*.json")}


# --------------------------------------------------------------------------- paths


def test_relative_paths_reach_workers_started_in_another_folder(models, glioma, sequential, tmp_path, monkeypatch):
    """The issue's failure: a relative dataset path with workers whose working folder differs.
    The client resolves it (and the model files) before submitting."""
    from distributed import Client, LocalCluster

    monkeypatch.chdir(glioma.parent)
    rel_models = [f"torchscript:{os.path.relpath(m.split(':', 1)[1])}" for m in models]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit=0) as cluster, Client(cluster) as client:
        client.run(os.chdir, str(elsewhere))
        assert set(client.run(os.getcwd).values()) == {str(elsewhere)}
        res = ST.Study(_config(rel_models, "glioma"), os.path.relpath(tmp_path / "out")).run(
            scheduler=cluster.scheduler_address, report=False)
    assert res.n_run == 4 and res.out == tmp_path / "out"
    meta = json.loads((res.out / "study.json").read_text())
    assert meta["config"]["dataset"] == str(glioma) and meta["config"]["models"] == models
    _assert_same_numbers(res.out, sequential)
    # the same study given with absolute paths, from the same folder: every stored case is reused
    # (fingerprints see paths as typed relative to here, so studies stored before still resume)
    assert ST.Study(_config(models, glioma), tmp_path / "out").run(workers=0, report=False).n_skipped == 4


def _deny_reading(prefix: str):
    """On a worker: pretend the filesystem under ``prefix`` is not mounted (os.access says no)."""
    import napari_medadv.core.study.cases as K
    import napari_medadv.core.study.cluster as C

    real = os.access

    class _OS:
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def access(path, mode):
            return False if str(path).startswith(prefix) else real(path, mode)

    C.os = K.os = _OS()


def _slow_cases(seconds: float):
    """On a worker: each case starts ``seconds`` late (the same numbers, more time in flight), so a
    test that acts while a case runs does not race tiny cases that finish in a blink."""
    import napari_medadv.core.study.cases as K

    real = K.run_case

    def run_case(*args, **kwargs):
        time.sleep(seconds)
        return real(*args, **kwargs)

    K.run_case = run_case  # the client submits cases.run_case by reference: workers look it up here


def test_worker_that_cannot_read_the_data_is_named(models, glioma, tmp_path, capsys):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit=0) as cluster, Client(cluster) as client:
        workers = sorted(client.scheduler_info()["workers"])
        client.run(_deny_reading, str(glioma), workers=[workers[1]])
        argv = ["study", str(glioma), "--model", models[0], "--attack", "fgsm", "--eps", "0.05",
                "--trust-model-code", "--scheduler", cluster.scheduler_address, "--quiet", "--out", str(tmp_path / "o")]
        assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medadv: error: worker ") and "\n" not in err
    assert workers[1] in err and f"cannot read {glioma}" in err
    assert "shared" in err and "--stage" in err
    assert not (tmp_path / "o" / "cases").exists() or not list((tmp_path / "o" / "cases").iterdir())


def test_stage_sends_cases_and_models_to_workers_that_cannot_read_them(models, glioma, sequential, tmp_path):
    """``--stage``: the same worker that cannot read the dataset gets the files through Dask
    (also the TorchScript sidecars); the numbers equal the sequential run's."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit=0) as cluster, Client(cluster) as client:
        client.run(_deny_reading, str(glioma.parent.parent))
        client.run(_deny_reading, str(Path(models[0].split(":", 1)[1]).parent))
        res = ST.Study(_config(models, glioma), tmp_path).run(scheduler=cluster.scheduler_address, stage=True,
                                                              report=False)
        staged = client.run(lambda dask_worker: sorted(p.name for p in Path(dask_worker.local_directory).rglob("*")
                                                       if "medadv-stage" in str(p) and p.is_file()))
    assert res.n_run == 4 and res.n_failed == 0
    for names in staged.values():
        assert {"tiny0.pt", "tiny0.json", "tiny1.pt", "glioma_004_flair.nii.gz"} <= set(names)
    _assert_same_numbers(tmp_path, sequential)


# --------------------------------------------------------------------------- GPU workers


def test_gpu_index_of_worker_names():
    assert [gpu_index(n, 2) for n in (0, 1, "2", "SLURMCluster-3-0", "SLURMCluster-3-1")] == [0, 1, 0, 0, 1]
    assert gpu_index("SLURMCluster-7", 1) == 0
    assert gpu_index("no-digits-here", 3) == gpu_index("no-digits-here", 3) < 3


def test_gpu_cases_go_to_gpu_workers_and_models_load_once_per_worker(models, glioma, sequential, tmp_path):
    """A fake ``GPU`` resource on CPU: a cluster with one GPU worker and one CPU-only worker runs
    every case on the GPU worker, which loads each model once for all four cases."""
    from distributed import Client, LocalCluster, Worker

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                      memory_limit=0, resources={"GPU": 1}) as cluster, Client(cluster) as client:
        async def cpu_worker():
            return await Worker(cluster.scheduler_address, nthreads=1, memory_limit=0)

        w = cluster.sync(cpu_worker)
        try:
            client.wait_for_workers(2)
            res = ST.Study(_config(models, glioma), tmp_path).run(scheduler=cluster.scheduler_address, report=False)
        finally:
            cluster.sync(w.close)
    stored = _stored(tmp_path)
    assert res.n_run == 4 and len({c["worker"] for c in stored.values()}) == 1
    assert w.address not in next(iter(stored.values()))["worker"]
    # two models loaded once for four cases (fewer if its thread reuses one an earlier test loaded in)
    assert sum(c["models_loaded"] for c in stored.values()) <= 2
    _assert_same_numbers(tmp_path, sequential)


def test_local_gpu_workers_declare_the_resource(models, glioma, sequential, tmp_path):
    """``ClusterSpec(gpus=2)``: one worker per GPU, each ``GPU=1``; each worker loads each model
    at most once, whatever number of cases it runs."""
    spec = ClusterSpec("local", gpus=2, processes=False)
    res = ST.Study(_config(models, glioma), tmp_path).run(cluster=spec, report=False)
    stored = _stored(tmp_path)
    workers = {c["worker"] for c in stored.values()}
    assert res.n_run == 4 and len(workers) == 2
    for w in workers:  # threads of this process: a worker thread may reuse one an earlier test loaded in
        assert sum(c["models_loaded"] for c in stored.values() if c["worker"] == w) <= 2
    _assert_same_numbers(tmp_path, sequential)


def test_jobqueue_job_script_for_gpus():
    """dask-jobqueue's SLURM job for --gpus-per-job 2: two workers, each GPU=1 with one thread."""
    pytest.importorskip("dask_jobqueue")
    spec = ClusterSpec("slurm", queue="gpu", walltime="00:30:00", cores=8, memory="32GB", gpus_per_job=2,
                       job_directives=["--constraint=a100"], interface="lo")
    cluster = jobqueue_cluster(spec)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for needle in ("#SBATCH -p gpu", "#SBATCH -t 00:30:00", "#SBATCH --cpus-per-task=8", "#SBATCH --gres=gpu:2",
                   "#SBATCH --constraint=a100", "--nworkers 2", "--resources GPU=1", "--interface lo"):
        assert needle in script, needle
    assert script.rsplit("--nthreads", 1)[1].split()[0] == "1"  # ours comes last: one thread per worker
    with pytest.raises(MedadvError, match="fewer than --gpus-per-job"):
        ClusterSpec("slurm", cores=1, gpus_per_job=2).validate()


@pytest.mark.parametrize("kind, needles", [
    ("pbs", ["#PBS -q fromconfig", "#PBS -l ngpus=1", "--resources GPU=1"]),
    ("lsf", ["#BSUB -q fromconfig", '#BSUB -gpu "num=1"', "--resources GPU=1"]),
    ("slurm", ["#SBATCH -p fromconfig", "#SBATCH --gres=gpu:1", "#SBATCH --cpus-per-task=6", "--resources GPU=1"]),
])
def test_jobqueue_settings_from_its_own_config(kind, needles):
    """Settings not given on the command line come from dask-jobqueue's configuration
    (``jobqueue.<kind>``), as in ~/.config/dask/jobqueue.yaml."""
    pytest.importorskip("dask_jobqueue")
    import dask

    with dask.config.set({f"jobqueue.{kind}.queue": "fromconfig", f"jobqueue.{kind}.cores": 6,
                          f"jobqueue.{kind}.memory": "8GB", f"jobqueue.{kind}.interface": "lo"}):
        cluster = jobqueue_cluster(ClusterSpec(kind, gpus_per_job=1))
        try:
            script = cluster.job_script()
        finally:
            cluster.close()
    for needle in needles:
        assert needle in script, (needle, script)


# --------------------------------------------------------------------------- faults


@pytest.mark.slow
def test_worker_killed_mid_study(models, glioma, sequential, tmp_path):
    """SIGKILL to a worker process while it computes a case: Dask runs that case again elsewhere,
    the study completes with every case exactly once and the sequential numbers."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit=0) as cluster, Client(cluster) as client:
        pids = client.run(os.getpid)
        client.run(_slow_cases, 1.0)  # a case is still running when the first one is stored
        killed = []

        def kill_a_busy_worker(p):
            if p.case is None or killed:
                return
            busy = [w for w, keys in client.processing().items() if keys]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append((busy[0], client.processing()[busy[0]]))

        res = ST.Study(_config(models, glioma), tmp_path).run(scheduler=cluster.scheduler_address, progress=kill_a_busy_worker,
                                                      report=False)
    assert killed, "no worker was busy when the first case finished"
    stored = _stored(tmp_path)
    assert res.n_run == 4 and res.n_failed == 0 and len(stored) == 4
    for w in {c["worker"] for c in stored.values()}:  # fresh processes: each loads each model exactly once
        assert sum(c["models_loaded"] for c in stored.values() if c["worker"] == w) == 2, w
    _assert_same_numbers(tmp_path, sequential)


def _with_copies(glioma: Path, root: Path, n_copies: int) -> dict[str, str]:
    """``glioma``'s cases under ``root``, plus ``n_copies`` renamed copies of each (the same
    images, so the same numbers); returns each case id -> the original's id."""
    from napari_medadv.core.data.glioma import read_brats_case, write_brats_case

    origin = {}
    for folder in sorted(p for p in glioma.iterdir() if p.is_dir()):
        channels, seg, affine = read_brats_case(folder, folder.name)
        for k in range(n_copies + 1):
            cid = folder.name if k == 0 else f"{folder.name}c{k}"
            write_brats_case(root / cid, cid, channels, seg, affine)
            origin[cid] = folder.name
    return origin


@pytest.mark.slow
def test_interrupted_client_resumes(models, glioma, sequential, tmp_path):
    """Ctrl-C to ``medadv study`` on a 2-worker LocalCluster once a case is stored: it exits 130
    naming the stored cases, its worker processes are gone, and the same command resumes.
    Twelve cases (the four, twice copied), so cases are still to run when the interrupt lands
    (a subprocess: its workers cannot be slowed as :func:`_slow_cases` does); the copies' numbers
    equal their originals'."""
    data = tmp_path / "data"
    origin = _with_copies(glioma, data, 2)
    out = tmp_path / "s"
    argv = [sys.executable, "-m", "napari_medadv.cli", "study", str(data),
            *sum((["--model", m] for m in models), []), "--attack", "fgsm", "--attack", "ifgsm", "--eps", "0.05",
            "--steps", "2", "--transfer", "--seed", "5", "--trust-model-code", "--workers", "2", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not list((out / "cases").glob("*.json")) and p.poll() is None and time.monotonic() - t0 < 120:
        time.sleep(0.02)
    assert p.poll() is None, p.communicate()[1][-2000:]
    children = psutil.Process(p.pid).children(recursive=True)  # the LocalCluster's worker processes
    assert children
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "run the same command again to resume" in err, err[-2000:]
    _, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, f"worker processes of the interrupted study still run: {alive}"
    n_stored = len(list((out / "cases").glob("*.json")))
    assert 1 <= n_stored < len(origin)
    assert main(argv[3:-4] + ["--sequential", "--quiet", "--out", str(out)]) == 0
    assert ST.Study(_config(models, data), out).run(workers=0, report=False).n_skipped == len(origin)
    rows, ref = _rows(out), _rows(sequential).drop(columns="seed")  # seeds derive from case ids;
    rows = rows.drop(columns="seed")  # FGSM and i-FGSM draw nothing from them
    assert not rows.duplicated(KEY).any(), "a case's rows are in the results twice"
    rows["copy"] = rows["case"].map(lambda c: c[len(origin[c]):])
    rows["case"] = rows["case"].map(origin)
    for _, part in rows.groupby("copy"):
        part = part.drop(columns="copy").sort_values(KEY).reset_index(drop=True)
        pd.testing.assert_frame_equal(part, ref, check_exact=False, rtol=1e-6, atol=1e-9)


def _break_case(root: Path, cid: str) -> None:
    """A case folder whose FLAIR file is truncated (every read raises)."""
    f = root / cid / f"{cid}_flair.nii.gz"
    f.write_bytes(f.read_bytes()[:300])


@pytest.mark.parametrize("mode", ["sequential", "dask"])
def test_case_raising_on_every_try_is_reported(models, glioma, sequential, tmp_path, mode, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(glioma, data)
    _break_case(data, "glioma_003")
    out = tmp_path / "out"
    argv = ["study", str(data), *sum((["--model", m] for m in models), []), "--attack", "fgsm", "--attack", "ifgsm",
            "--eps", "0.05", "--steps", "2", "--transfer", "--seed", "5", "--trust-model-code", "--quiet",
            *(["--sequential"] if mode == "sequential" else ["--workers", "2", "--threads"]), "--out", str(out)]
    assert main(argv) == 1
    cap = capsys.readouterr()
    assert "4 cases (3 run, 0 already stored, 1 failed)" in cap.out
    assert "medadv: case glioma_003 failed: " in cap.err and "glioma_003_flair.nii.gz" in cap.err
    rec = json.loads((out / "failed" / "glioma_003.json").read_text())
    assert rec["tries"] == (1 if mode == "sequential" else 2) and "glioma_003_flair.nii.gz" in rec["error"]
    md = (out / "report.md").read_text()
    assert "## Failed cases" in md and "| glioma_003 |" in md and "3 of 4 cases stored" in md
    stored = _rows(out)
    assert sorted(stored["case"].unique()) == ["glioma_001", "glioma_002", "glioma_004"]
    ref = _rows(sequential)
    pd.testing.assert_frame_equal(stored, ref[ref["case"] != "glioma_003"].reset_index(drop=True),
                                  check_exact=False, rtol=1e-6, atol=1e-9)
    # repaired: the re-run runs only that case and the failure record goes
    shutil.copy(glioma / "glioma_003" / "glioma_003_flair.nii.gz", data / "glioma_003")
    assert main(argv) == 0
    assert "(1 run, 3 already stored)" in capsys.readouterr().out
    assert not (out / "failed" / "glioma_003.json").exists() and "Failed cases" not in (out / "report.md").read_text()


# --------------------------------------------------------------------------- a real SLURM


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A single-node SLURM (munged, slurmctld, slurmd on 127.0.0.1) for this module; skipped
    with the reason when it cannot run here."""
    try:
        s = _slurm.start(tmp_path_factory.mktemp("slurm"))
    except _slurm.SlurmUnavailable as exc:
        pytest.skip(f"single-node SLURM unavailable: {exc}")
    yield s
    s.stop()


def test_slurm_refusing_the_job_is_one_line(slurm, models, glioma, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    argv = ["study", str(glioma), "--model", models[0], "--attack", "fgsm", "--trust-model-code", "--quiet",
            "--cluster", "slurm", "--cores", "1", "--memory", "100000GB", "--interface", "lo", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medadv: error: the batch system refused the worker job: ") and "\n" not in err
    assert "Requested node configuration is not available" in err
    assert not slurm.jobs()


@pytest.mark.slow
def test_study_on_slurm_equals_sequential(slurm, models, glioma, sequential, tmp_path, monkeypatch, capsys):
    """``medadv study --cluster slurm``: workers as batch jobs (dask-jobqueue), the same numbers as
    the sequential run, every job gone afterwards."""
    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    out = tmp_path / "out"
    argv = ["study", str(glioma), *sum((["--model", m] for m in models), []), "--attack", "fgsm",
            "--attack", "ifgsm", "--eps", "0.05", "--steps", "2", "--transfer", "--seed", "5", "--trust-model-code",
            "--cluster", "slurm", "--jobs", "2", "--cores", "1", "--memory", "2GB", "--walltime", "00:10:00",
            "--interface", "lo", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err[-3000:]
    err = capsys.readouterr().err
    assert "#SBATCH" in err and "SLURM batch jobs" in err
    _assert_same_numbers(out, sequential)
    assert {c["worker"].split(" ")[0].split("-")[0] for c in _stored(out).values()} == {"SLURMCluster"}
    assert list((out / "cluster-logs").glob("*.out")) or list((out / "cluster-logs").glob("*.err"))
    t0 = time.monotonic()
    while slurm.jobs() and time.monotonic() - t0 < 30:
        time.sleep(0.5)
    assert not slurm.jobs(), f"batch jobs left running: {slurm.jobs()}"


def test_local_worker_processes_get_the_commands_allocator(monkeypatch):
    """A study's LocalCluster workers start with the heap set-up the ``medadv`` command made here
    (``core.allocator``: glibc reads its variables as the worker process starts)."""
    from distributed import Client

    from napari_medadv.core import allocator
    from napari_medadv.core.study.cluster import open_cluster

    monkeypatch.setattr(allocator, "_done", None)
    monkeypatch.setenv("MEDADV_ALLOCATOR", "system")
    allocator.reuse_freed_memory()  # the test process keeps glibc's defaults
    assert allocator.child_environ() == {}
    monkeypatch.setattr(allocator, "_done", "glibc heap reuse (as the medadv command sets it up)")
    with open_cluster(ClusterSpec("local", workers=1, processes=True)) as oc:
        assert isinstance(oc.client, Client)
        env = oc.client.run(lambda: {k: os.environ.get(k) for k in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_",
                                                                   "MALLOC_TRIM_THRESHOLD_")})
    assert list(env.values()) == [{"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
                                   "MALLOC_TRIM_THRESHOLD_": str(allocator.TRIM_BYTES)}]  # not dask's 64 kB
