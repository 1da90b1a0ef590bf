"""A user's own images: ``privimage data import``, a run on them, and its audit without ``--data-root``.

The import tests convert small PNG and npz datasets of other sizes and of RGB
and compare every pixel with what the conversion must give (seconds). The slow
tests share one stage cache: the README's "Your own images" block runs as
written (then its audit, from another directory, and again after one image
changed), and a 28x28 grayscale and a 64x64 RGB dataset each run through the
smoke profile after the documented import.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from privimage.cli import main
from privimage.data import load_dataset
from privimage.run_audit import audit_run

REPO_ROOT = Path(__file__).resolve().parent.parent
README_SETUP = "scripts/bootstrap.sh && source .venv/bin/activate"


def _cli(capsys, argv: list[str]) -> tuple[int, dict | None, str]:
    """Exit status, the ``--json`` result (if any) and standard error of one command."""
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 and lines else None), captured.err


def _image_folder(root: Path, images: np.ndarray, labels: np.ndarray, *, split: str) -> None:
    """``root/<split>/class_<label>/<index>.png`` from uint8 N x H x W (x C) arrays."""
    for index, (image, label) in enumerate(zip(images, labels)):
        path = root / split / f"class_{label}" / f"{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)


def _tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode() + (path.read_bytes() if path.is_file() else b""))
    return digest.hexdigest()


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma in PIL's fixed-point arithmetic (what ``convert("L")`` computes)."""
    r, g, b = (rgb[..., c].astype(np.int64) for c in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


# --------------------------------------------------------------------------- import


def test_import_pads_28x28_grayscale_pngs_into_the_public_shape(capsys, tmp_path):
    rng = np.random.default_rng(1)
    images = {split: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for split, n in (("train", 6), ("test", 4))}
    for split, batch in images.items():
        _image_folder(tmp_path / "mnist28", batch, np.arange(len(batch)) % 2, split=split)
    before = _tree_hash(tmp_path / "mnist28")
    code, result, err = _cli(capsys, ["data", "import", "folder:mnist28", "folder:mnist32", "--fit", "pad",
                                      "--profile", "smoke", "--data-root", str(tmp_path), "--json"])
    assert code == 0, err
    # The smoke profile's public data (Glyphs-1k) is 1 x 32 x 32: the default target.
    assert result["image_shape"] == [1, 32, 32] and result["splits"] == {"test": 4, "train": 6}
    for split, batch in images.items():
        imported = load_dataset("folder:mnist32", split, data_root=tmp_path)
        # MNIST's own padding: the 28x28 image, unchanged, with 2 black pixels on every side.
        expected = {(int(label), image.tobytes()) for label, image in
                    zip(np.arange(len(batch)) % 2, np.pad(batch, ((0, 0), (2, 2), (2, 2))))}
        assert imported.image_shape == (1, 32, 32) and imported.class_names == ("class_0", "class_1")
        assert {(int(label), image[0].tobytes()) for label, image in zip(imported.labels, imported.images)} == expected
    assert _tree_hash(tmp_path / "mnist28") == before, "the import changed its source"


def test_import_turns_64x64_rgb_npz_into_32x32_grayscale(capsys, tmp_path):
    # One flat colour per image: box-resizing keeps it, so every pixel must be that colour's luma.
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [200, 120, 40], [7, 250, 99]], dtype=np.uint8)
    x = np.broadcast_to(colours[:, None, None, :], (5, 64, 64, 3)).copy()
    (tmp_path / "photos").mkdir()
    np.savez(tmp_path / "photos" / "train.npz", x=x, y=np.array([0, 1, 2, 0, 1]),
             class_names=np.array(["cat", "dog", "owl"]))
    code, result, err = _cli(capsys, ["data", "import", "npz:photos", "npz:photos32", "--profile", "smoke",
                                      "--data-root", str(tmp_path), "--json"])
    assert code == 0, err
    imported = load_dataset("npz:photos32", "train", data_root=tmp_path)
    assert imported.image_shape == (1, 32, 32) and imported.class_names == ("cat", "dog", "owl")
    assert imported.labels.tolist() == [0, 1, 2, 0, 1]
    assert np.array_equal(imported.images, np.broadcast_to(_luma(colours)[:, None, None, None], (5, 1, 32, 32)))
    # To RGB, another size: grey is replicated in each channel.
    code, _, err = _cli(capsys, ["data", "import", "npz:photos32", "npz:photos16rgb.npz", "--size", "16",
                                 "--channels", "3", "--data-root", str(tmp_path), "--json"])
    assert code == 0, err
    rgb = load_dataset("npz:photos16rgb.npz", "train", data_root=tmp_path)
    assert rgb.image_shape == (3, 16, 16)
    assert np.array_equal(rgb.images, np.repeat(imported.images[:, :, :16, :16], 3, axis=1))


@pytest.mark.parametrize("case", ["existing destination", "pad would shrink", "not own data", "bad channels"])
def test_import_refuses_with_one_error_line_and_writes_nothing(capsys, tmp_path, case):
    _image_folder(tmp_path / "big", np.zeros((2, 40, 40), np.uint8), np.array([0, 1]), split="train")
    (tmp_path / "taken").mkdir()
    argv, mentions = {
        "existing destination": (["folder:big", "folder:taken"], "exists already"),
        "pad would shrink": (["folder:big", "npz:new", "--fit", "pad"], "cannot be padded"),
        "not own data": (["mnist5k", "npz:new"], "folder:PATH or npz:PATH"),
        "bad channels": (["folder:big", "npz:new", "--channels", "2"], "invalid choice"),
    }[case]
    # A bad argument is refused by the parser with the same one line as any other bad input.
    code, _, err = _cli(capsys, ["data", "import", *argv, "--profile", "smoke", "--data-root", str(tmp_path)])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and mentions in lines[0], err
    # Nothing half-written: no new dataset, no staging folder, the existing one untouched.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "taken"]
    assert not any((tmp_path / "taken").iterdir())


# --------------------------------------------------------------------------- end to end on the smoke profile


@pytest.fixture(scope="module")
def shared_cache(module_cache):
    """The module's cache: Glyphs-1k and the query function are made once."""
    return module_cache


def _readme_example() -> str:
    """The bash block of the README's "Your own images" section."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## Your own images\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section should hold one bash example"
    return blocks[0]


def _failed_checks(stdout: str) -> list[str]:
    return [check["name"] for check in json.loads(stdout.strip().splitlines()[-1])["checks"] if not check["passed"]]


@pytest.mark.slow
def test_the_readme_example_runs_as_written_and_its_audit_guards_the_data(shared_cache, tmp_path):
    script = _readme_example()
    # The one setup line makes the project's .venv current: here the tests' interpreter is that environment.
    assert script.startswith(README_SETUP), "the example should start by setting up the environment"
    script = script.replace(README_SETUP, 'privimage() { "$PYTHON" -m privimage "$@"; }', 1)
    clone = tmp_path / "clone"  # a fresh checkout's root: no data/, no runs/
    clone.mkdir()
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PRIVIMAGE_CACHE": str(shared_cache)}
    env.pop("PRIVIMAGE_DATA", None)
    ran = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=clone, env=env, capture_output=True,
                         text=True, timeout=900)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.strip().splitlines()[-1] == "pass: privimage-d run in runs/digits"
    assert json.loads((clone / "runs" / "digits" / "run.json").read_text())["data_root"] == str(clone / "data")

    # From another directory, without --data-root: the run's recorded root is hashed.
    audit = [sys.executable, "-m", "privimage", "audit", "--run", str(clone / "runs" / "digits"), "--json"]
    elsewhere = subprocess.run(audit, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert elsewhere.returncode == 0 and _failed_checks(elsewhere.stdout) == [], elsewhere.stdout[-3000:]

    # One pixel of one training image changed: the dataset is no longer the one the ledger accounts for.
    changed = sorted((clone / "data" / "digits" / "train").rglob("*.png"))[0]
    pixels = np.array(Image.open(changed))
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(changed)
    tampered = subprocess.run(audit, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert tampered.returncode == 1 and _failed_checks(tampered.stdout) == ["dataset_hash"], tampered.stdout[-3000:]


# Rows of MNIST-5k's test split for the two splits made from it: disjoint strides through the whole
# split, so each holds every class (labels 0..9, as an npz without class names must).
SPLIT_ROWS = {"train": np.arange(0, 1000, 4), "test": np.arange(1, 1000, 10)}


def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-5k test digits (never its sensitive training split) cut back to their 28x28 original."""
    test = load_dataset("mnist5k", "test")
    rows = SPLIT_ROWS[split]
    return test.images[rows, 0, 2:30, 2:30], test.labels[rows]


def _28x28_grayscale_folder(root: Path) -> str:
    for split in SPLIT_ROWS:
        _image_folder(root / "gray28", *_digits(split), split=split)
    return "folder:gray28"


def _64x64_rgb_npz(root: Path) -> str:
    (root / "rgb64").mkdir(parents=True)
    for split in SPLIT_ROWS:
        images, labels = _digits(split)
        large = np.stack([np.array(Image.fromarray(image).resize((64, 64), Image.Resampling.BICUBIC))
                          for image in images])
        # Coloured strokes on a tinted background: three channels that differ.
        rgb = np.stack([large, large // 2 + 60, 255 - large], axis=-1)
        np.savez(root / "rgb64" / f"{split}.npz", x=rgb, y=labels)
    return "npz:rgb64"


@pytest.mark.slow
@pytest.mark.parametrize("make, fit", [(_28x28_grayscale_folder, "pad"), (_64x64_rgb_npz, "resize")],
                         ids=["28x28-grayscale-png", "64x64-rgb-npz"])
def test_other_sizes_and_rgb_run_through_the_smoke_profile_after_import(capsys, shared_cache, tmp_path, make, fit):
    data_root = tmp_path / "data"
    source = make(data_root)
    code, _, err = _cli(capsys, ["data", "import", source, "folder:mine", "--fit", fit, "--profile", "smoke",
                                 "--data-root", str(data_root), "--json"])
    assert code == 0, err
    out = tmp_path / "run"
    code, result, err = _cli(capsys, ["run", "--method", "privimage-d", "--epsilon", "10", "--sensitive",
                                      "folder:mine", "--profile", "smoke", "--no-evaluate", "--out", str(out),
                                      "--data-root", str(data_root), "--json"])
    assert code == 0, err
    with np.load(out / "synthetic.npz") as archive:
        assert archive["x"].shape[1:] == (1, 32, 32)
    assert 0.99 * 10 <= result["privacy"]["epsilon"] <= 10
    audit = audit_run(run_dir=out)
    assert audit.status == "pass", [check for check in audit.checks if not check.passed]
