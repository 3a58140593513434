"""``reviews``: generated product reviews with a sentiment label, demo data for ``text-transformer``.

No text corpus can be downloaded here, so the demo set is generated, and says so: short English
reviews assembled from templates, products, filler clauses and sentiment phrases; label 1 when the
sentiment phrases are positive, 0 when negative. Each review mixes one to three sentiment phrases of
its label with neutral filler, so a model must find the sentiment words wherever they sit. Seeded.
"""

from __future__ import annotations

import numpy as np

DEFAULT_SIZE = 2000
LABELS = ("negative", "positive")

_PRODUCTS = ("blender", "phone case", "backpack", "desk lamp", "kettle", "headset", "keyboard", "tent",
             "coffee grinder", "monitor", "jacket", "printer", "toaster", "router", "camera bag")
_POSITIVE = ("works perfectly", "is excellent", "exceeded my expectations", "is great value", "feels sturdy",
             "is a joy to use", "arrived quickly and works well", "is wonderful", "does exactly what it promises",
             "is highly recommended", "looks fantastic", "is reliable")
_NEGATIVE = ("broke after a week", "is terrible", "was a waste of money", "feels cheap", "stopped working",
             "is awful", "arrived damaged", "is disappointing", "does not do what it promises",
             "is noisy and flimsy", "looks worse than the pictures", "is unreliable")
_FILLER = ("i bought it last month", "my sister uses one too", "the box was blue", "shipping took four days",
           "i use it every morning", "it came with a manual", "we keep it in the kitchen", "the colour is grey",
           "i ordered the large size", "it replaced an older model")
_OPENINGS = ("this {p}", "the {p}", "my new {p}", "honestly the {p}", "overall this {p}")


def generate_reviews(n: int = DEFAULT_SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(texts, y): texts (n,) unicode strings of at most ~200 characters, y (n,) int64 0/1, balanced."""
    rng = np.random.default_rng(seed)
    y = np.arange(n, dtype=np.int64) % 2
    rng.shuffle(y)
    texts = []
    for label in y:
        phrases = _POSITIVE if label == 1 else _NEGATIVE
        product = _PRODUCTS[rng.integers(len(_PRODUCTS))]
        parts = [_OPENINGS[rng.integers(len(_OPENINGS))].format(p=product) + " " + phrases[rng.integers(len(phrases))]]
        for _ in range(rng.integers(0, 3)):
            parts.append(("it " + phrases[rng.integers(len(phrases))]) if rng.random() < 0.5
                         else _FILLER[rng.integers(len(_FILLER))])
        rng.shuffle(parts)
        texts.append(", ".join(parts) + ".")
    return np.array(texts), y
