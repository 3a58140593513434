"""Byte-level tokens for sequence tasks: no vocabulary file to share or download, every site maps a
character to the same ids. Id = UTF-8 byte + 3; 0 pads, 1 begins and 2 ends a sequence."""

from __future__ import annotations

import torch

PAD, BOS, EOS = 0, 1, 2
VOCAB = 256 + 3


def encode(text: str) -> list[int]:
    """``text``'s UTF-8 bytes as token ids (each byte + 3: ids 0-2 are reserved)."""
    return [b + 3 for b in text.encode("utf-8")]


def decode(ids: list[int]) -> str:
    """Ids up to the first EOS (PAD and BOS skipped) back to text; invalid UTF-8 is replaced."""
    out = bytearray()
    for i in ids:
        if i == EOS:
            break
        if i >= 3:
            out.append(i - 3)
    return out.decode("utf-8", errors="replace")


def source_tensor(texts: list[str], length: int) -> torch.Tensor:
    """(N, length) ids, **left**-padded, so the encoder's last state follows the last real byte."""
    out = torch.full((len(texts), length), PAD, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = encode(text)
        if ids:
            out[row, length - len(ids):] = torch.tensor(ids)
    return out


def target_tensor(texts: list[str], length: int) -> torch.Tensor:
    """(N, length + 2) ids: BOS, the bytes, EOS, right-padded (decoder input = [:, :-1], output = [:, 1:])."""
    out = torch.full((len(texts), length + 2), PAD, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [BOS, *encode(text), EOS]
        out[row, :len(ids)] = torch.tensor(ids)
    return out
