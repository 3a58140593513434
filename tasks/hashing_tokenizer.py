"""A tokenizer that needs no vocabulary: lower-cased words hashed into a fixed number of buckets.

Sites share no vocabulary file and nothing is downloaded: every site maps the same word to the same
id (CRC-32, stable across processes and machines, unlike Python's ``hash``). Two words may share a
bucket (the hashing trick, Weinberger et al. 2009); with 2,048 buckets and a few thousand distinct
words that costs little. Id 0 pads, id 1 is the ``[CLS]`` token the classifier reads.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

PAD, CLS = 0, 1
RESERVED = 2
_WORD = re.compile(r"[^\W_]+|[^\w\s]", re.UNICODE)  # words (letters/digits, any script) and punctuation


def words(text: str) -> list[str]:
    """The tokens of ``text``: lower-cased words and single punctuation marks."""
    return _WORD.findall(text.lower())


def encode(texts: list[str], *, buckets: int, max_length: int) -> np.ndarray:
    """(N, max_length) int64 ids: ``[CLS]``, then one id per word, then padding.

    Callers check lengths first (:func:`token_count`); a longer text is cut here.
    """
    out = np.zeros((len(texts), max_length), dtype=np.int64)
    out[:, 0] = CLS
    for i, text in enumerate(texts):
        ids = [RESERVED + zlib.crc32(w.encode("utf-8")) % (buckets - RESERVED) for w in words(text)][: max_length - 1]
        out[i, 1:1 + len(ids)] = ids
    return out


def token_count(text: str) -> int:
    """Tokens ``text`` takes, ``[CLS]`` included."""
    return 1 + len(words(text))
