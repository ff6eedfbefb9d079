"""Shared fixtures: the real TerraMesh chips in ../shared and small space files written per test."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import pytest
import ray
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Collecting the tests imports torch, Lightning and TerraTorch into this process: with the garbage collector
# paused until collection ends, then the imports frozen out of later collections (as trial processes do:
# search/imports.py).
gc.disable()


def pytest_collection_finish(session) -> None:
    gc.enable()
    gc.freeze()


def pytest_collection_modifyitems(items) -> None:
    """Tests that need the shared Ray down (`no_ray`) run last, in their files' order: the shared Ray then starts
    once for the session instead of once more after each of them (a start costs ~6 s and ~10 s of CPU here)."""
    items.sort(key=lambda item: "no_ray" in item.fixturenames)


REPO = Path(__file__).resolve().parents[1]
SHARED_CHIPS = REPO.parent / "shared" / "data" / "terramesh-examples"
VAL_CHIP, TEST_CHIP = "433D_629L_3_1", "637U_59R_1_3"


@pytest.fixture(scope="module")
def embedded_ray():
    """Embedded Ray started the way `search run` starts it, once for every in-process search of the session.

    `run_search` leaves a Ray it did not start running, so the searches share one start and one shutdown
    (about 7 s each on 2 CPUs); a test that needs its own Ray, or none, asks for `no_ray` (such tests run last).
    The CLI tests run in subprocesses and start their own, as a user's run does.
    """
    from search.execution.cluster import connect

    if not ray.is_initialized():
        connect(None)
    yield


@pytest.fixture(scope="module")
def no_ray():
    """No Ray running in this process (the shared one is shut down): for tests that start their own or none."""
    ray.shutdown()
    yield
    ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def shut_ray_down_at_the_end():
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def real_chips() -> Path:
    if not (SHARED_CHIPS / "S1RTC").is_dir():
        pytest.fail(f"the real chips are expected at {SHARED_CHIPS} (../shared beside the repo)")
    return SHARED_CHIPS


def terratorch_fit_fast_dev_run(config: Path, cwd: Path):
    """`terratorch fit -c CONFIG --trainer.fast_dev_run=true` through TerraTorch's own CLI (`build_lightning_cli`,
    what the `terratorch` command calls), in this process, which has the model stack imported already: a fresh
    interpreter costs ~14 s of imports per config. What only a fresh interpreter shows, that the config's
    `custom_modules_path` registers the project's backbones there, holds because the config names the plugin
    folder (checked here) and that folder registers them in a fresh `terratorch fit`
    (tests/test_commands.py::test_the_example_base_config_trains_under_terratorch_as_it_stands). Returns the trainer."""
    from terratorch.cli_tools import build_lightning_cli

    from em_backbones import PLUGIN_DIR

    plugin = yaml.safe_load(Path(config).read_text()).get("custom_modules_path")
    assert plugin and (Path(cwd) / plugin).resolve() == PLUGIN_DIR.resolve(), f"custom_modules_path: {plugin}"
    environ = dict(os.environ)  # TerraTorch's CLI sets GDAL's variables for the process
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)  # relative data paths resolve as they would for the command run there
        patch.setattr(sys, "argv", ["terratorch", "fit", "-c", str(config), "--trainer.fast_dev_run=true"])
        try:
            trainer = build_lightning_cli().trainer  # reads sys.argv, as the command does
        finally:
            os.environ.clear()
            os.environ.update(environ)
    assert trainer.state.finished and trainer.global_step == 1  # fast_dev_run: `max_steps=1` reached
    return trainer


def small_space(data_root: Path | None, **overrides) -> dict:
    """A valid tiny space over the real chips; tests change one field at a time."""
    space = {
        "name": "test",
        "scale": "tiny",
        "tiers": {2: ["em_prithvi", "em_terramind", "em_clay"]},
        "techniques": {"quantization_bits": [16], "lora_rank": [0], "gradient_checkpointing": [False, True]},
        "training": {"learning_rate": {"low": 3e-4, "high": 3e-3}, "batch_size": [4], "epochs": 2,
                     "grace_period": 1, "reduction_factor": 2, "num_samples": 4, "seed": 0},
        "decoder": {"name": "UperNetDecoder", "channels": 32},
        "evaluation": {"folds": 0},  # the held-out stage costs trials; the tests that check it turn it on
        "data": {"root": str(data_root) if data_root else None, "layout": "terramesh",
                 "modalities": ["S1RTC", "S2L2A"], "num_classes": 10, "tile_size": 112,
                 "val_chips": [VAL_CHIP], "test_chips": [TEST_CHIP]},
    }
    for dotted, value in overrides.items():
        node = space
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return space


@pytest.fixture
def write_space(tmp_path):
    def write(space: dict | str, name: str = "space.yaml") -> Path:
        path = tmp_path / name
        path.write_text(space if isinstance(space, str) else yaml.safe_dump(space))
        return path

    return write
