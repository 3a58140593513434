"""The partition summary a person reads before a simulation starts: sizes and labels per site."""

from __future__ import annotations

import numpy as np
from rich.table import Table

from fedshield.simulations.run_setup import PreparedData

MAX_ROWS = 12


def partition_table(data: PreparedData, description: str) -> Table:
    """Sizes and label histogram per site (the first ``MAX_ROWS`` sites when there are more)."""
    sizes = data.sizes
    labels_per_site = (data.counts > 0).sum(axis=1)
    title = (f"{data.dataset}: {len(sizes)} sites, {description}; {int(sizes.sum())} examples"
             + (f" ({data.copies} augmented copies per real one)" if data.copies > 1 else "")
             + f", central test set {data.test_examples}")
    table = Table(title=title)
    table.add_column("site")
    table.add_column("examples", justify="right")
    table.add_column("labels", justify="right")
    table.add_column("examples per label " + " ".join(data.class_names))
    shown = range(min(len(sizes), MAX_ROWS))
    for i in shown:
        table.add_row(data.names[i], str(int(sizes[i])), str(int(labels_per_site[i])),
                      " ".join(str(int(c)) for c in data.counts[i]))
    if len(sizes) > MAX_ROWS:
        table.caption = (f"… {len(sizes) - MAX_ROWS} more sites; sizes min {int(sizes.min())} / median "
                         f"{int(np.median(sizes))} / max {int(sizes.max())}, labels per site mean "
                         f"{labels_per_site.mean():.1f}; heat map in plots/partition.png")
    return table
