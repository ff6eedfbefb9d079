"""matplotlib's pyplot with the file-only backend, chosen once for every figure the project draws.

Reports and benchmarks only ever write PNGs: "Agg" needs no display, and choosing it here, before
pyplot is first imported, is the one place that setting lives.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt"]
