"""Read and validate a site's ``source<TAB>target`` pairs (UTF-8 TSV, no header), with one-line errors
naming the file and the row."""

from __future__ import annotations

from pathlib import Path

from fedshield.common.errors import DataError


def find_tsv(folder: Path, name: object) -> Path:
    """``fedshield.toml``'s ``file``, else ``data.tsv``, else the folder's only ``.tsv`` file."""
    if isinstance(name, str) and name:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path}: no such file (fedshield.toml file = {name!r}); fix the name")
        return path
    if (folder / "data.tsv").is_file():
        return folder / "data.tsv"
    found = sorted(folder.glob("*.tsv"))
    if len(found) != 1:
        what = "no .tsv file" if not found else f"{len(found)} .tsv files"
        raise DataError(f"{folder}: {what}; put the pairs in data.tsv (source<TAB>target per line) "
                        "or name the file with file = \"...\" in fedshield.toml")
    return found[0]


def read_pairs(path: Path, *, max_source: int, max_target: int) -> tuple[list[str], list[str]]:
    """Every non-blank line as (source, target); both non-empty and within the byte limits."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 (byte {exc.start}); save the file as UTF-8") from None
    sources, targets = [], []
    for row, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if line.count("\t") != 1:
            found = "no tab" if "\t" not in line else f"{line.count(chr(9))} tabs"
            raise DataError(f"{path}:{row}: {found}; each line is source<TAB>target (one tab)")
        source, target = (part.strip() for part in line.split("\t"))
        for side, value, limit, key in (("source", source, max_source, "max_length"),
                                        ("target", target, max_target, "max_target_length")):
            if not value:
                raise DataError(f"{path}:{row}: empty {side}; give a {side} text or remove the line")
            size = len(value.encode("utf-8"))
            if size > limit:
                raise DataError(f"{path}:{row}: {side} is {size} bytes, more than {key} = {limit}; shorten it "
                                f"or raise {key} in fedshield.toml")
        sources.append(source)
        targets.append(target)
    if len(sources) < 2:
        raise DataError(f"{path}: {len(sources)} pair(s); a site needs at least 2 (one to train, one to validate)")
    return sources, targets
