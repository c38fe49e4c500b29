"""Small summaries for the Dagster UI's metadata: plots as inline images, quantiles."""

import base64
import io

import numpy as np
from dagster import MetadataValue


def png_markdown(fig) -> MetadataValue:
    """A matplotlib figure as a markdown image (shown inline in the Dagster UI)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return MetadataValue.md(f"![plot](data:image/png;base64,{encoded})")


def quantiles(values, qs=(0.0, 0.1, 0.5, 0.9, 1.0)) -> dict[str, float]:
    """The values' quantiles (the nearest rank); `values`: a list, a NumPy array or an Arrow array
    (sorted as an array: millions of values cost no Python objects)."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    if not len(ordered):
        return {}
    return {f"q{int(q * 100):02d}": float(ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))])
            for q in qs}

