"""Where a run's Optuna study lives: a journal file in the run directory (Optuna's JournalStorage).

A journal needs no database server, survives a killed driver (resume reads it back) and is what
the report reads for parameter importances.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

JOURNAL = "optuna_journal.log"


def journal_storage(run_dir: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(run_dir / JOURNAL)))


def load_study(run_dir: Path, study_name: str) -> optuna.Study:
    """The run's Optuna study, read back from its journal."""
    return optuna.load_study(study_name=study_name, storage=journal_storage(run_dir))
