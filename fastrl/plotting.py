"""matplotlib for the commands that draw PNGs, imported only when asked for."""
from __future__ import annotations

import sys


def pyplot(purpose: str = "no plot"):
    """matplotlib.pyplot on the Agg backend, or None (saying so on stdout) when matplotlib
    is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed; {purpose} (pip install matplotlib)", file=sys.stdout)
        return None
    return plt
