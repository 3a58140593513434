"""Split example indices across sites: IID, Dirichlet label skew, label shards, quantity skew.

- IID: shuffle and deal.
- Dirichlet label skew (Hsu, Qi & Brown 2019, "Measuring the Effects of Non-Identical Data
  Distribution for Federated Visual Classification"): for each class, the share each site receives is
  drawn from Dir(α·1); small α gives each site few classes, large α approaches IID.
- Pathological shards (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
  Decentralized Data"): cut each label's examples into shards (``sites·k`` in all, label-pure), give
  each site ``k`` random shards, so each site sees at most ``k`` labels.
- Quantity skew (Li et al. 2022, "Federated Learning on Non-IID Data Silos: An Experimental Study"):
  site sizes proportional to a Dir(β·1) draw, labels IID within each site; small β = very unequal.

Regression targets are binned into quantiles before label-based partitioning. Every index is assigned
exactly once; the same seed gives the same partition; every site gets at least ``min_size`` examples
(two: one to train, one to validate), or a ``ConfigError`` names the flag to change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedshield.common.errors import ConfigError

REGRESSION_BINS = 5
MIN_SITE_EXAMPLES = 2
PARTITIONERS = ("iid", "dirichlet", "shards", "quantity")


@dataclass(frozen=True)
class PartitionSpec:
    """Which partitioner and its parameter: α (dirichlet), labels per site (shards), β (quantity)."""

    kind: str = "iid"
    alpha: float | None = None
    shards: int | None = None
    beta: float | None = None

    def describe(self) -> str:
        return {"iid": "IID", "dirichlet": f"Dirichlet label skew α={self.alpha:g}" if self.alpha else "",
                "shards": f"{self.shards} label shard(s) per site",
                "quantity": f"quantity skew β={self.beta:g}" if self.beta else ""}[self.kind]

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "alpha": self.alpha, "shards": self.shards, "beta": self.beta}


def _check(n_examples: int, n_sites: int, min_size: int = MIN_SITE_EXAMPLES) -> None:
    if n_sites < 1:
        raise ConfigError("the number of sites (--sites, --clients) must be at least 1")
    if n_sites > n_examples:
        raise ConfigError(f"{n_sites} sites is more than the {n_examples} examples; use fewer sites (--sites, "
                          "--clients)")
    if n_sites * min_size > n_examples:
        raise ConfigError(f"{n_sites} sites: {n_examples} examples cannot give every site {min_size}; "
                          "use fewer sites (--sites, --clients)")


def iid_partition(labels: np.ndarray, n_sites: int, seed: int) -> list[np.ndarray]:
    """Shuffle and deal indices into ``n_sites`` near-equal parts."""
    _check(len(labels), n_sites, 1)
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, n_sites)]


def label_bins(labels: np.ndarray) -> np.ndarray:
    """Class labels as they are; real-valued targets as quantile bins."""
    labels = np.asarray(labels)
    if np.issubdtype(labels.dtype, np.integer):
        return labels
    edges = np.quantile(labels, np.linspace(0, 1, REGRESSION_BINS + 1)[1:-1])
    return np.digitize(labels, edges)


def _top_up(parts: list[list[int]], min_size: int, rng: np.random.Generator) -> None:
    """Move random examples from the largest sites to any site below ``min_size``.

    With many sites and small α a Dirichlet draw leaves some sites (almost) empty; redrawing until
    none is would almost never end at 1,000 sites, so the few short sites borrow from the largest.
    """
    sizes = np.array([len(p) for p in parts])
    for site in np.flatnonzero(sizes < min_size):
        while len(parts[site]) < min_size:
            donor = int(np.argmax([len(p) for p in parts]))
            take = int(rng.integers(len(parts[donor])))
            parts[site].append(parts[donor].pop(take))


def _check_alpha(alpha: float) -> None:
    if not alpha > 0:
        raise ConfigError(f"--dirichlet {alpha}: α must be positive (small = more skew, e.g. 0.1-1.0)")


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ConfigError(f"--quantity-skew {beta}: β must be positive (small = very unequal sizes, e.g. 0.5)")


def _check_shards(shards_per_site: int) -> None:
    if shards_per_site < 1:
        raise ConfigError(f"--shards {shards_per_site}: give each site at least 1 shard (labels per site)")


def dirichlet_partition(labels: np.ndarray, n_sites: int, alpha: float, seed: int,
                        min_size: int = MIN_SITE_EXAMPLES) -> list[np.ndarray]:
    """Label-skewed partition; every site gets at least ``min_size`` examples."""
    _check_alpha(alpha)
    _check(len(labels), n_sites, min_size)
    bins = label_bins(labels)
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(n_sites)]
    for cls in np.unique(bins):
        idx = rng.permutation(np.flatnonzero(bins == cls))
        shares = rng.dirichlet(np.full(n_sites, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for site, chunk in enumerate(np.split(idx, cuts)):
            parts[site].extend(chunk.tolist())
    _top_up(parts, min_size, rng)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def shard_partition(labels: np.ndarray, n_sites: int, shards_per_site: int, seed: int,
                    min_size: int = MIN_SITE_EXAMPLES) -> list[np.ndarray]:
    """Each site gets ``shards_per_site`` label-sorted shards (so at most that many labels)."""
    _check_shards(shards_per_site)
    n_shards = n_sites * shards_per_site
    _check(len(labels), n_sites, min_size)
    if n_shards > len(labels) or (len(labels) // n_shards) * shards_per_site < min_size:
        raise ConfigError(f"--shards {shards_per_site} with {n_sites} sites needs {n_shards} shards of "
                          f"{len(labels)} examples; use fewer sites or fewer shards")
    rng = np.random.default_rng(seed)
    bins = label_bins(labels)
    classes, sizes = np.unique(bins, return_counts=True)
    # label-pure shards: each class is cut into a number of shards proportional to its size (largest
    # remainder), so a shard never straddles two labels and a site sees at most k labels
    quota = sizes / sizes.sum() * n_shards
    per_class = np.floor(quota).astype(int)
    per_class[np.argsort(-(quota - per_class))[: n_shards - per_class.sum()]] += 1
    shards: list[np.ndarray] = []
    for cls, count in zip(classes, per_class, strict=True):
        if count:
            shards.extend(np.array_split(rng.permutation(np.flatnonzero(bins == cls)), count))
    deal = rng.permutation(n_shards).reshape(n_sites, shards_per_site)
    parts = [np.sort(np.concatenate([shards[s] for s in row])) for row in deal]
    if min(len(p) for p in parts) < min_size:
        raise ConfigError(f"--shards {shards_per_site} with {n_sites} sites leaves a site with fewer than "
                          f"{min_size} examples; use fewer sites or more shards")
    return parts


def quantity_skew_partition(labels: np.ndarray, n_sites: int, beta: float, seed: int,
                            min_size: int = MIN_SITE_EXAMPLES) -> list[np.ndarray]:
    """Site sizes ∝ Dir(β) (each at least ``min_size``), examples dealt at random."""
    _check_beta(beta)
    n = len(labels)
    _check(n, n_sites, min_size)
    rng = np.random.default_rng(seed)
    spare = n - n_sites * min_size
    sizes = min_size + rng.multinomial(spare, rng.dirichlet(np.full(n_sites, beta)))
    order = rng.permutation(n)
    return [np.sort(part) for part in np.split(order, np.cumsum(sizes)[:-1])]


def make_partition(labels: np.ndarray, n_sites: int, spec: PartitionSpec, seed: int) -> list[np.ndarray]:
    """Dispatch on ``spec.kind``; see the module docstring for each partitioner."""
    if spec.kind == "iid":
        _check(len(labels), n_sites)
        return iid_partition(labels, n_sites, seed)
    if spec.kind == "dirichlet":
        return dirichlet_partition(labels, n_sites, float(spec.alpha or 0.0), seed)
    if spec.kind == "shards":
        return shard_partition(labels, n_sites, int(spec.shards or 0), seed)
    if spec.kind == "quantity":
        return quantity_skew_partition(labels, n_sites, float(spec.beta or 0.0), seed)
    raise ConfigError(f"--partition {spec.kind!r} is unknown; choose one of: {', '.join(PARTITIONERS)}")


def label_counts(labels: np.ndarray, parts: list[np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """(sites, classes) example counts per site and class, and the class names (bins for regression)."""
    bins = label_bins(labels)
    classes = np.unique(bins)
    counts = np.stack([np.array([(bins[p] == c).sum() for c in classes]) for p in parts]) if parts else np.zeros((0, 0))
    integer = np.issubdtype(np.asarray(labels).dtype, np.integer)
    names = [str(c) if integer else f"q{c + 1}" for c in classes]
    return counts.astype(np.int64), names


def spec_from_flags(*, partition: str | None, iid: bool, dirichlet: float | None, shards: int | None,
                    quantity_skew: float | None) -> PartitionSpec:
    """The partition the CLI flags ask for; one partitioner at a time."""
    given = [name for name, value in (("--iid", iid or None), ("--dirichlet", dirichlet), ("--shards", shards),
                                       ("--quantity-skew", quantity_skew)) if value is not None]
    if len(given) > 1:
        raise ConfigError(f"{' and '.join(given)} exclude each other; pick one partitioner")
    implied = {"--iid": "iid", "--dirichlet": "dirichlet", "--shards": "shards", "--quantity-skew": "quantity"}
    kind = partition or (implied[given[0]] if given else "iid")
    if kind not in PARTITIONERS:
        raise ConfigError(f"--partition {kind!r} is unknown; choose one of: {', '.join(PARTITIONERS)}")
    if given and implied[given[0]] != kind:
        raise ConfigError(f"--partition {kind} does not take {given[0]}; drop one of them")
    if kind == "dirichlet" and dirichlet is None:
        raise ConfigError("--partition dirichlet needs --dirichlet α (e.g. 0.5)")
    if kind == "shards" and shards is None:
        raise ConfigError("--partition shards needs --shards K (labels per site, e.g. 2)")
    if kind == "quantity" and quantity_skew is None:
        raise ConfigError("--partition quantity needs --quantity-skew β (e.g. 0.5)")
    # the values too, here, before any data set is loaded: a bad flag costs well under a second
    if dirichlet is not None:
        _check_alpha(dirichlet)
    if shards is not None:
        _check_shards(shards)
    if quantity_skew is not None:
        _check_beta(quantity_skew)
    return PartitionSpec(kind, alpha=dirichlet, shards=shards, beta=quantity_skew)
