"""Bad input through the real CLI: one line naming the field or file, exit code 2, no run directory.

Field-level checks have their own tests (test_space.py, test_data.py, test_failures.py); this file
drives `python -m search run` end to end so that the exit code and the clean-up are tested too,
including errors that surface only after the run directory was claimed (data, storage).
"""

from __future__ import annotations

import numpy as np
import pytest

from search.__main__ import main
from tests.conftest import TEST_CHIP, small_space
from tests.test_data import _copy_chips, _rewrite


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(["run", *args])
    return code, capsys.readouterr().err.strip()


def assert_refused(code: int, err: str, fragment: str) -> None:
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err, err
    assert fragment in err, err


@pytest.mark.parametrize("overrides, fragment", [
    ({"tiers": {2: ["em_prithvii"]}}, "did you mean 'em_prithvi'?"),
    ({"techniques.quantization_bits": [2]}, "techniques.quantization_bits[0]"),
    ({"training.num_samples": 0}, "training.num_samples"),
    ({"resources.memory_budget_gb": -1}, "resources.memory_budget_gb"),
    ({"data.root": "/no/such/chips"}, "data.root: /no/such/chips is not a directory"),
])
def test_bad_space_or_data_root_exits_2_and_leaves_nothing(overrides, fragment, write_space, real_chips,
                                                           tmp_path, capsys):
    space = small_space(real_chips, **overrides)
    out = tmp_path / "run"
    assert_refused(*run_cli([str(write_space(space)), "--out", str(out)], capsys), fragment)
    assert not out.exists()


def test_bad_chip_found_after_the_run_directory_was_claimed_removes_it(write_space, real_chips, tmp_path, capsys):
    """With `data.on_bad_chip: error` the first bad chip is fatal (by default it is skipped with a warning)."""
    root = _copy_chips(real_chips, tmp_path / "chips")
    _rewrite(root / "S2L2A" / f"{TEST_CHIP}.tif", np.zeros((5, 224, 224)))
    out = tmp_path / "run"
    space = small_space(root, **{"data.on_bad_chip": "error"})
    code, err = run_cli([str(write_space(space)), "--out", str(out)], capsys)
    assert_refused(code, err, f"{TEST_CHIP}.tif: S2L2A needs 12 bands, found 5")
    assert not out.exists()


def test_skipped_chips_that_leave_a_split_empty_stop_the_run_in_one_line(write_space, real_chips, tmp_path, capsys):
    root = _copy_chips(real_chips, tmp_path / "chips")
    for chip in ("282D_485L_3_3", "38D_378R_2_3", "609U_541L_3_0"):  # every training chip: all NaN
        _rewrite(root / "S1RTC" / f"{chip}.tif", np.full((2, 224, 224), np.nan))
    out = tmp_path / "run"
    code, err = run_cli([str(write_space(small_space(root))), "--out", str(out)], capsys)
    assert_refused(code, err, "data: need at least one training and one validation chip; 2 usable chip(s) give "
                              "train 0, val 1, test 1")
    assert not out.exists()


def test_a_batch_larger_than_the_training_tiles_is_one_line(write_space, real_chips, tmp_path, capsys):
    out = tmp_path / "run"
    space = small_space(real_chips, **{"training.batch_size": [64]})
    assert_refused(*run_cli([str(write_space(space)), "--out", str(out)], capsys),
                   "training.batch_size: 64 is more than the 12 training tiles each of 1 worker(s) gets")
    assert not out.exists()


def test_out_that_cannot_be_created_or_is_not_empty(write_space, real_chips, tmp_path, capsys):
    space_file = write_space(small_space(real_chips))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert_refused(*run_cli([str(space_file), "--out", str(blocker / "run")], capsys),
                   f"--out {blocker / 'run'}: cannot create the run directory")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert_refused(*run_cli([str(space_file), "--out", str(busy)], capsys), "exists and is not empty")
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]


def test_missing_space_file_and_resume_without_out(tmp_path, write_space, real_chips, capsys):
    assert_refused(*run_cli([str(tmp_path / "nope.yaml")], capsys), "space file not found")
    assert_refused(*run_cli([str(write_space(small_space(real_chips))), "--resume"], capsys),
                   "--resume needs --out DIR")


def test_a_space_file_that_is_not_utf8_text_is_one_line(tmp_path, capsys):
    """300 random bytes (as a user's corrupted download would be): one line, exit 2, nothing created."""
    space_file = tmp_path / "random.yaml"
    space_file.write_bytes(np.random.default_rng(7).integers(0, 256, 300, dtype=np.uint8).tobytes())
    out = tmp_path / "run"
    code, err = run_cli([str(space_file), "--out", str(out)], capsys)
    assert_refused(code, err, f"{space_file}: expected a UTF-8 text (YAML) space file")
    assert not out.exists()
