"""The images model's pipeline.py (diffusers, no Triton): the tiny random-weight pipeline."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

MODEL_DIR = Path(__file__).resolve().parents[2] / "services" / "images" / "model_repository" / "tiny_sd" / "1"
sys.path.insert(0, str(MODEL_DIR))  # pipeline.py lives beside model.py in the Triton model repository

from pipeline import build_tiny_pipeline, ensure_tiny_pipeline, generate, load_pipeline  # noqa: E402

SIZE = 64
STEPS = 2


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pipelines") / "tiny-sd"
    build_tiny_pipeline(str(directory))
    return directory


@pytest.fixture(scope="module")
def pipe(built):
    return load_pipeline(str(built), "cpu")


def run(pipe, seed, n=1, width=SIZE, height=SIZE, **kw):
    kw = {"quality": "standard", "style": "vivid", **kw}
    return generate(pipe, "a red bicycle", width, height, n, seed, steps=STEPS, **kw)


def test_build_writes_a_complete_folder_and_no_leftovers(built):
    index = json.loads((built / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None]
    assert [p.name for p in built.parent.iterdir()] == [built.name]  # the temporary folder is gone
    assert ensure_tiny_pipeline(str(built)) == str(built)  # present: not rebuilt
    # readable by other users (a container image is built as root and run as another user)
    assert all(p.stat().st_mode & 0o004 for p in [built, *built.rglob("*")])


def test_shape_and_dtype(pipe):
    images = run(pipe, 1, width=SIZE * 2, height=SIZE)
    assert images.shape == (1, SIZE, SIZE * 2, 3)
    assert images.dtype == np.uint8


def test_same_seed_same_images_other_seed_other_images(pipe):
    first = run(pipe, 7)
    assert np.array_equal(first, run(pipe, 7))
    assert not np.array_equal(first, run(pipe, 8))


def test_no_seed_is_random(pipe):
    assert not np.array_equal(run(pipe, None), run(pipe, None))


def test_several_images_use_consecutive_seeds(pipe):
    images = run(pipe, 7, n=2)
    assert images.shape == (2, SIZE, SIZE, 3)
    assert not np.array_equal(images[0], images[1])
    # image i is seed + i whatever the batch (up to float rounding between batch sizes)
    alone = run(pipe, 8)[0].astype(int)
    assert np.abs(images[1].astype(int) - alone).max() <= 1


def test_quality_and_style_change_the_picture(pipe):
    standard = run(pipe, 3)
    assert not np.array_equal(standard, run(pipe, 3, quality="hd"))
    assert not np.array_equal(standard, run(pipe, 3, style="natural"))


def test_rebuilt_pipeline_gives_identical_images(pipe, tmp_path):
    build_tiny_pipeline(str(tmp_path / "again"))
    again = load_pipeline(str(tmp_path / "again"), "cpu")
    assert np.array_equal(run(pipe, 5), run(again, 5))
