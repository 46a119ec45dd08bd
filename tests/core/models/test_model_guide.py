"""docs/models.md ("Bring your own model") is executable: each worked example is built offline
exactly as the guide writes it (its files, its scripts, its `medadv attack` command), loaded with
the guide's spec and attacked; the sidecar field table lists every ModelInfo field; the quoted
troubleshooting messages are the ones the CLI prints.

Nothing is downloaded: torchxrayvision is faked as in test_adapters.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import runpy
import shlex
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from napari_medadv import cli
from napari_medadv.core.io import read_image
from napari_medadv.core.models import adapters, demo, load_model  # noqa: F401  (registers every scheme)
from napari_medadv.core.models.base import ModelInfo
from napari_medadv.core.pipeline import run_attack

GUIDE = Path(__file__).resolve().parents[3] / "docs" / "models.md"
EPS = 0.02
EXAMPLES = {"a": "torchscript", "b": "bundle", "c": "factory", "d": "xrv"}
# modules the guide's scripts import by their own names (removed again after building)
GUIDE_MODULES = ("my_model",)


# ----------------------------------------------------------------------------- reading the guide
def guide_text() -> str:
    return GUIDE.read_text(encoding="utf-8")


def section(heading_prefix: str, level: str = "##") -> str:
    """The guide's text under the first heading starting with ``heading_prefix``, up to the next
    heading of the same or a higher level (``#`` lines inside code blocks are not headings)."""
    lines = guide_text().splitlines()
    start, in_code = None, False
    for i, ln in enumerate(lines):
        if ln.startswith("```"):
            in_code = not in_code
            continue
        if in_code or not ln.startswith("#"):
            continue
        hashes = len(ln) - len(ln.lstrip("#"))
        if start is None and ln.startswith(f"{level} {heading_prefix}"):
            start = i + 1
        elif start is not None and hashes <= len(level):
            return "\n".join(lines[start:i]) + "\n"
    assert start is not None, f"docs/models.md has no heading {level} {heading_prefix}"
    return "\n".join(lines[start:]) + "\n"


def fenced_blocks(text: str) -> list[tuple[str, str, str]]:
    """(language, body, the non-blank line before the fence) for every fenced block."""
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        before = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
        j = i + 1
        while not lines[j].startswith("```"):
            j += 1
        out.append((m.group(1), "\n".join(lines[i + 1:j]) + "\n", before))
        i = j + 1
    return out


def example_files(text: str) -> dict[str, str]:
    """Files the example asks the reader to write: blocks introduced by "`path`...:"."""
    files = {}
    for lang, body, before in fenced_blocks(text):
        m = re.match(r"^`([^`]+)`.*:\s*$", before)
        if m and lang in ("python", "json"):
            files[m.group(1)] = body
    return files


def shell_commands(text: str) -> list[str]:
    cmds = []
    for lang, body, _ in fenced_blocks(text):
        if lang == "bash":
            cmds += [ln.strip() for ln in body.replace("\\\n", " ").splitlines() if ln.strip()]
    return cmds


def example(letter: str) -> str:
    return section(f"Example {letter}:")


# ----------------------------------------------------------------------------- the inputs
def write_brats_case(folder: Path, shape=(24, 24, 16)) -> Path:
    """A small skull-stripped BraTS-like case: four int16 contrasts inside an ellipsoid 'brain'."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    idx = np.indices(shape)
    c = [(s - 1) / 2 for s in shape]
    brain = sum(((idx[k] - c[k]) / (0.45 * shape[k])) ** 2 for k in range(3)) < 1
    blob = sum(((idx[k] - c[k] - 2) / 3.0) ** 2 for k in range(3)) < 1  # a bright "lesion"
    for i, mod in enumerate(("t1", "t1ce", "t2", "flair")):
        vol = np.where(brain, 300 + 100 * i + 40 * rng.standard_normal(shape) + 200 * blob * (i % 2 + 1), 0)
        nib.save(nib.Nifti1Image(vol.astype(np.int16), np.eye(4)), folder / f"case_{mod}.nii.gz")
    return folder


def write_chest_png(path: Path) -> Path:
    import imageio.v3 as iio

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:64, :64]
    img = 40 + 120 * np.exp(-(((xx - 20) / 9) ** 2 + ((yy - 32) / 20) ** 2)) \
        + 120 * np.exp(-(((xx - 44) / 9) ** 2 + ((yy - 32) / 20) ** 2)) + 20 * rng.random((64, 64))
    iio.imwrite(path, np.clip(img, 0, 255).astype(np.uint8))
    return path


# ----------------------------------------------------------------------------- building an example
@contextlib.contextmanager
def in_dir(folder: Path):
    old_cwd, old_path = os.getcwd(), list(sys.path)
    os.chdir(folder)
    sys.path.insert(0, str(folder))  # `python script.py` puts the script's folder first
    try:
        yield
    finally:
        os.chdir(old_cwd)
        sys.path[:] = old_path
        for name in GUIDE_MODULES:
            sys.modules.pop(name, None)


def build_example(letter: str, workdir: Path) -> list[list[str]]:
    """Write the example's files, run its `python ...` lines; return its `medadv ...` commands."""
    text = example(letter)
    for rel, body in example_files(text).items():
        path = workdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".json"):
            json.loads(body)  # the guide's JSON is valid JSON
        path.write_text(body)
    medadv = []
    with in_dir(workdir):
        for cmd in shell_commands(text):
            argv = shlex.split(cmd)
            if argv[0] == "python":
                runpy.run_path(argv[1], run_name="__main__")
            elif argv[0] == "medadv":
                medadv.append(argv)
            else:
                raise AssertionError(f"unexpected command in example {letter}: {cmd}")
    assert medadv, f"example {letter} has no medadv command"
    return medadv


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Examples a-c built once (in the order a reader would), with the case folder beside them."""
    root = tmp_path_factory.mktemp("guide")
    write_brats_case(root / "case")
    commands = {letter: build_example(letter, root) for letter in "abc"}
    return types.SimpleNamespace(root=root, commands=commands)


def parse_attack(argv: list[str]):
    """The guide's command through the real CLI parser (so it is a valid command line)."""
    assert argv[:2] == ["medadv", "attack"], argv
    return cli.build_parser().parse_args(argv[1:])


def attack_as_the_guide_says(root: Path, argv: list[str]):
    args = parse_attack(argv)
    assert args.trust_model_code and args.attack == "fgsm" and args.eps == EPS and args.seed == 0
    with in_dir(root):  # relative paths in the spec resolve as in the reader's shell
        model = load_model(args.model, weights=args.weights, trust_code=args.trust_model_code, device="cpu")
        model.channel_map = args.channels
        image = read_image(args.image)
        outcome = run_attack(image, model, "fgsm", params={"eps": EPS}, seed=0)
    check_outcome(outcome, image)
    return args, model, outcome


def check_outcome(outcome, image):
    assert outcome.result.cancelled is False
    assert outcome.adversarial.shape == image.array.shape
    delta = outcome.perturbation
    assert np.abs(delta).max() > 0, "the attack changed nothing"
    for c in range(image.n_channels):
        rng = float(image.array[c].max() - image.array[c].min())
        # adversarial - image is a difference of float32 values: near an intensity of ~900 one
        # float32 step is 6e-5, so allow that rounding on top of 1e-5
        ulp = float(np.spacing(np.abs(image.array[c]).max()))
        assert np.abs(delta[c]).max() <= EPS * rng + 1e-5 + ulp, image.channel_names[c]
    iq = outcome.metrics["image_quality"]
    for key in ("psnr", "ssim", "rmse", "l2", "linf"):
        assert np.isfinite(iq[key]), key
    for name, per in iq["per_channel"].items():
        assert np.isfinite(per["linf_fraction_of_range"]) and per["linf_fraction_of_range"] <= EPS + 1e-6, name


def finite_numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from finite_numbers(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from finite_numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield float(obj)


# ----------------------------------------------------------------------------- the examples
def test_example_a_torchscript_softmax_graph_with_sliding_windows(workdir):
    (argv,) = workdir.commands["a"]
    args, model, outcome = attack_as_the_guide_says(workdir.root, argv)
    assert args.model == "torchscript:seg3d.pt"
    info = model.info
    assert (info.task, info.output, info.normalization) == ("segmentation", "probabilities", "zscore-nonzero")
    assert info.roi_size == [16, 16, 16] and outcome.image.spatial_shape != tuple(info.roi_size)  # tiled
    assert outcome.channel_mapping.how == "by name"
    assert outcome.channel_mapping.pairs[1] == ("T1Gd", "t1ce")
    dice = outcome.metrics["dice"]["clean_vs_adversarial"]
    assert dice["label_names"] == {"1": "necrosis", "2": "oedema", "4": "enhancing tumour"}
    assert set(dice["regions"]) == {"WT", "TC", "ET"}  # BraTS labels {1, 2, 4}: regions too
    assert all(np.isfinite(v) for v in finite_numbers(outcome.metrics["dice"]))


def test_example_b_bundle_reorders_brats_folder_by_name(workdir):
    (argv,) = workdir.commands["b"]
    args, model, outcome = attack_as_the_guide_says(workdir.root, argv)
    assert args.model == "bundle:brats_bundle" and args.channels is None
    info = model.info
    assert info.channel_names == ["T1c", "T1", "T2", "FLAIR"]
    assert (info.output, info.region_names, info.normalization) == ("sigmoid", ["TC", "WT", "ET"], "zscore-nonzero")
    assert info.name == "BraTS SegResNet bundle (toy)"  # configs/medadv.json was read
    assert outcome.image.channel_names == ["t1", "t1ce", "t2", "flair"]
    assert outcome.channel_mapping.order == (1, 0, 2, 3)  # T1c <- t1ce, T1 <- t1, T2 <- t2, FLAIR <- flair
    assert outcome.channel_mapping.how == "by name"
    assert all(np.isfinite(v) for v in finite_numbers(outcome.metrics["dice"]))


def test_example_b_cli_record_shows_the_mapping_quoted_in_the_guide(workdir, capsys):
    (argv,) = workdir.commands["b"]
    with in_dir(workdir.root):
        assert cli.main(argv[1:] + ["--quiet"]) == 0
        record = json.loads((Path(parse_attack(argv).out) / "record.json").read_text())
    quoted = re.search(r'^"channel_mapping": (\{.*\})$', example("b"), flags=re.M)
    assert quoted, "the guide quotes record.json's channel_mapping"
    assert record["channel_mapping"] == json.loads(quoted.group(1))


def test_example_c_factory_with_its_own_preprocessing(workdir):
    (argv,) = workdir.commands["c"]
    args, model, outcome = attack_as_the_guide_says(workdir.root, argv)
    assert args.model == "factory:my_model.py:build" and args.weights == "wt_flair_t1gd.pt"
    assert model.info.normalization == "none" and model.info.output_index == 0
    mapping = outcome.channel_mapping
    assert mapping.pairs == [("FLAIR", "flair"), ("T1Gd", "t1ce")] and mapping.unused == ["t1", "t2"]
    # the channels the model does not read are not perturbed by a gradient attack
    for c in (0, 2):
        assert np.abs(outcome.perturbation[c]).max() == 0
    dice = outcome.metrics["dice"]["clean_vs_adversarial"]
    assert dice["label_names"] == {"1": "whole tumour"} and "regions" not in dice


# ----------------------------------------------------------------------------- example d (fake xrv)
XRV_LABELS = ["Atelectasis", "Consolidation", "", "Pneumothorax", "Effusion"]
XRV_URL = "https://github.com/mlmed/torchxrayvision/releases/download/v1/nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"


class _FakeXrvDenseNet(nn.Module):
    """Mimics xrv.models.DenseNet(weights=...): reads its cache, ends in a (calibrated) sigmoid."""

    def __init__(self, weights=None, cache_dir=None, *, xrv=None):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=4)
        self.classifier = nn.Linear(4, len(XRV_LABELS))
        self.op_threshs = None
        if weights is not None:
            self.pathologies = xrv.models.model_urls[weights]["labels"]
            local = Path(cache_dir or xrv.utils.get_cache_dir()) / os.path.basename(XRV_URL)
            if not local.is_file():
                raise AssertionError("the fake torchxrayvision would download here")
            self.load_state_dict(torch.load(local, map_location="cpu", weights_only=True))
            self.op_threshs = torch.full((len(XRV_LABELS),), 0.5)
            self.eval()

    def forward(self, x):
        return torch.sigmoid(self.classifier(torch.tanh(self.conv(x / 1024)).mean((2, 3))))


@pytest.fixture
def fake_xrv(tmp_path, monkeypatch):
    cache = tmp_path / "xrv-cache" / "models_data"
    cache.mkdir(parents=True)
    xrv = types.ModuleType("torchxrayvision")
    xrv.models, xrv.utils = types.ModuleType("torchxrayvision.models"), types.ModuleType("torchxrayvision.utils")
    xrv.utils.get_cache_dir = lambda: str(cache) + os.sep
    xrv.models.model_urls = {"densenet121-res224-all": {"weights_url": XRV_URL, "labels": XRV_LABELS}}
    xrv.models.DenseNet = lambda weights=None, cache_dir=None: _FakeXrvDenseNet(weights, cache_dir, xrv=xrv)
    for name, mod in (("torchxrayvision", xrv), ("torchxrayvision.models", xrv.models),
                      ("torchxrayvision.utils", xrv.utils)):
        monkeypatch.setitem(sys.modules, name, mod)
    torch.manual_seed(2)
    torch.save(_FakeXrvDenseNet().state_dict(), cache / os.path.basename(XRV_URL))  # "fetched once"
    return xrv


def test_example_d_torchxrayvision_from_its_cache(fake_xrv, tmp_path):
    write_chest_png(tmp_path / "chest.png")
    (argv,) = build_example("d", tmp_path)  # runs fetch_xrv_weights.py against the fake package
    args, model, outcome = attack_as_the_guide_says(tmp_path, argv)
    assert args.model == "xrv:densenet121-res224-all"
    assert model.info.class_names == ["Atelectasis", "Consolidation", "(unused 2)", "Pneumothorax", "Effusion"]
    assert outcome.channel_mapping.how == "file order"
    probs = outcome.metrics["probabilities"]
    assert len(probs) == len(XRV_LABELS)
    assert all(np.isfinite(v) for v in finite_numbers(probs))
    # the declaration the guide shows is the one the loader makes
    shown = [json.loads(body) for lang, body, _ in fenced_blocks(example("d")) if lang == "json"]
    assert len(shown) == 1
    made = model.info.to_dict()
    assert {k: made[k] for k in shown[0]} == shown[0]
    assert shown[0]["norm_std"] == [255 / 2048] and shown[0]["norm_mean"] == [127.5]


# ----------------------------------------------------------------------------- the field table
def test_sidecar_table_lists_every_model_info_field():
    table = section("The sidecar fields")
    rows = re.findall(r"^\|\s*`(\w+)`\s*\|(.*)\|\s*$", table, flags=re.M)
    documented = [name for name, _ in rows]
    assert len(documented) == len(set(documented)), "a field is listed twice"
    assert set(documented) == set(ModelInfo.__dataclass_fields__)
    for name, rest in rows:  # name | type | default | meaning | example: every cell filled
        cells = [c.strip() for c in rest.split("|")]
        assert len(cells) == 4 and all(cells), f"row {name!r} needs type, default, meaning and example"


def test_synonym_table_in_the_guide_matches_channels_py():
    from napari_medadv.core.models.channels import canonical_contrast

    table = section("Channels are matched by name")
    rows = re.findall(r"^\| (T1|T1c|T2|FLAIR) \| (.*) \|\s*$", table, flags=re.M)
    assert [r[0] for r in rows] == ["T1", "T1c", "T2", "FLAIR"]
    for canon, names in rows:
        for name in re.findall(r"`([^`]+)`", names):
            assert canonical_contrast(name) == canon, name


# ----------------------------------------------------------------------------- troubleshooting
def quoted_errors() -> list[str]:
    return [body.strip() for lang, body, _ in fenced_blocks(section("Troubleshooting")) if lang == "text"]


def cli_error(root: Path, argv: list[str], capsys) -> str:
    capsys.readouterr()
    with in_dir(root):
        assert cli.main(argv[1:] + ["--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_troubleshooting_messages_are_the_real_ones(workdir, tmp_path, capsys):
    import nibabel as nib

    root = workdir.root
    got = {}
    # channel names that do not match: a 4-D NIfTI without a sidecar naming its channels
    vols = [nib.load(root / "case" / f"case_{m}.nii.gz").get_fdata() for m in ("t1", "t1ce", "t2", "flair")]
    nib.save(nib.Nifti1Image(np.stack(vols, -1).astype(np.float32), np.eye(4)), root / "stack.nii.gz")
    bundle_cmd = workdir.commands["b"][0]
    stack_cmd = ["stack.nii.gz" if a == "case/" else a for a in bundle_cmd]
    got["channels"] = cli_error(root, stack_cmd, capsys)
    # ... and the override the guide gives for it works, recorded as given
    override = shlex.split(next(c for c in shell_commands(section("Channels are matched by name"))
                                if "--channels" in c))
    with in_dir(root):
        assert cli.main(override[1:] + ["--quiet"]) == 0
        rec = json.loads((Path(parse_attack(override).out) / "record.json").read_text())
    assert rec["channel_mapping"]["order"] == [1, 0, 2, 3] and rec["channel_mapping"]["how"] == "given"
    # a tuple output without output_index (example c's sidecar without it)
    tuple_dir = root / "no_output_index"
    tuple_dir.mkdir(exist_ok=True)
    shutil.copy(root / "wt_flair_t1gd.pt", tuple_dir / "wt_flair_t1gd.pt")
    side = json.loads((root / "wt_flair_t1gd.json").read_text())
    side.pop("output_index")
    (tuple_dir / "wt_flair_t1gd.json").write_text(json.dumps(side))
    factory_cmd = [a.replace("wt_flair_t1gd.pt", "no_output_index/wt_flair_t1gd.pt") for a in workdir.commands["c"][0]]
    got["tuple"] = cli_error(root, factory_cmd, capsys)
    # a missing sidecar (example a without seg3d.json)
    nosc = tmp_path / "nosidecar"
    nosc.mkdir()
    shutil.copy(root / "seg3d.pt", nosc / "seg3d.pt")
    (nosc / "case").symlink_to(root / "case")
    got["sidecar"] = cli_error(nosc, workdir.commands["a"][0], capsys)
    # untrusted code (example a without --trust-model-code)
    untrusted = [a for a in workdir.commands["a"][0] if a != "--trust-model-code"]
    got["trust"] = cli_error(root, untrusted, capsys)

    quoted = quoted_errors()
    assert len(quoted) == 4
    for key, line in got.items():
        assert line in quoted, f"the guide's {key} message is not what the CLI prints:\n{line}"
