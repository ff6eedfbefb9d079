"""TerraTorch `custom_modules_path` entry: registers the project's backbones (em_backbones.registered).

TerraTorch puts this folder's parent on `sys.path` and imports it by name. The project is normally
installed; a checkout that is not gets its root added so `em_backbones` imports.
"""

import sys
from pathlib import Path

try:
    import em_backbones  # noqa: F401
except ImportError:  # a checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import em_backbones.registered  # noqa: E402, F401
