"""Shared fixtures: the real TerraMesh chips in ../shared and small space files written per test."""

from __future__ import annotations

import gc
import os
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


REPO = Path(__file__).resolve().parents[1]
SHARED_CHIPS = REPO.parent / "shared" / "data" / "terramesh-examples"
VAL_CHIP, TEST_CHIP = "433D_629L_3_1", "637U_59R_1_3"


@pytest.fixture(scope="module")
def embedded_ray():
    """Embedded Ray started the way `search run` starts it, once for every in-process search of the session.

    `run_search` leaves a Ray it did not start running, so the searches share one start and one shutdown
    (about 7 s each on 2 CPUs); a test that needs its own Ray, or none, asks for `no_ray` and the next search
    starts this one again. The CLI tests run in subprocesses and start their own, as a user's run does.
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
