"""Class names: reading a labels file, and turning the classes a user names into unit indices.

Labels files (``--labels FILE``, ``labels=`` of :func:`preddiff.explain`) hold one class name a
line, in the order of the model's output units. The file is read as UTF-8; a byte-order mark
(as Windows editors write it) is dropped; spaces around a name are ignored; blank lines at the
end are ignored, and a blank line anywhere else is refused with its line number (skipping it
would shift every following name onto the wrong class). ``"imagenet"`` names the 1000
ILSVRC-2012 classes the package ships.

Naming classes (``--classes``, ``target=``): each item is a unit index or a class name.

- A name matches exactly first; otherwise case-insensitively, with runs of spaces counted
  as one (``Tiger Cat`` finds ``tiger cat``).
- A name shared by several classes (ImageNet's ``crane``: 134 the bird and 517 the machine;
  ``maillot``: 638 and 639) is refused as ambiguous, listing the indices to use instead.
- An unknown name is refused with the closest names (:mod:`difflib`, and the names that
  contain it as a word: ``cat`` suggests ``tiger cat``, ``Persian cat``, …).
- On the command line the list is comma-separated. A name that itself contains a comma is
  written in double quotes: ``--classes '"crane, bird",281'`` (the CSV convention; a quote
  inside quotes is doubled). When the whole text is one class name it is taken as it is, so a
  single name with a comma needs no quotes.
"""
from __future__ import annotations

import csv
import difflib
from pathlib import Path

from .errors import InvalidArgument

__all__ = ["read_labels", "split_classes", "resolve_classes"]


def read_labels(spec, *, option: str = "--labels") -> list[str]:
    """Class names from ``spec``: None (none), ``"imagenet"`` (the bundled ILSVRC-2012 names)
    or a text file with one name a line (see the module docstring for the rules).

    Returns
    -------
    list of str
        The names in output-unit order (empty for None).

    Raises
    ------
    InvalidArgument
        A missing or unreadable file, an empty one, or a blank line before the last name.
    """
    if spec is None:
        return []
    if isinstance(spec, (list, tuple)):
        return [str(name) for name in spec]
    if str(spec) == "imagenet":
        from . import zoo

        return list(zoo.manifest("alexnet").labels)
    path = Path(spec)
    if not path.is_file():
        raise InvalidArgument(f"{option} {str(spec)!r}: no such file (give a text file with one "
                              "class name a line, or 'imagenet')")
    try:
        # utf-8-sig: a byte-order mark at the start is not part of the first name
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{option} {str(spec)!r}: cannot read it as UTF-8 text "
                              f"({type(exc).__name__})") from None
    labels = [line.strip() for line in lines]
    while labels and not labels[-1]:
        labels.pop()
    if not labels:
        raise InvalidArgument(f"{option} {str(spec)!r} is empty; expected one class name a line")
    blank = [i + 1 for i, name in enumerate(labels) if not name]
    if blank:
        shown = ", ".join(map(str, blank[:10])) + (" …" if len(blank) > 10 else "")
        raise InvalidArgument(
            f"{option} {str(spec)!r}: line{'s' * (len(blank) > 1)} {shown} "
            f"{'are' if len(blank) > 1 else 'is'} blank; every line names the class of one "
            "output unit, in order (blank lines at the end are ignored): name the class or "
            "remove the line")
    return labels


def split_classes(text) -> list[str]:
    """``'281,tiger cat'`` → ``['281', 'tiger cat']``; double quotes protect commas
    (``'"crane, bird",281'`` → ``['crane, bird', '281']``). Empty items are dropped."""
    if text is None:
        return []
    if not isinstance(text, str):
        return [str(item) for item in text]
    try:
        row = next(csv.reader([text], skipinitialspace=True, strict=True), [])
    except csv.Error as exc:
        raise InvalidArgument(f"--classes {text!r}: {exc}; write a name with a comma in "
                              'double quotes, e.g. "crane, bird",281') from None
    return [item.strip() for item in row if item.strip()]


def _key(name: str) -> str:
    return " ".join(str(name).split()).casefold()


def _suggestions(item: str, names) -> list[str]:
    key = _key(item)
    words = [n for n in dict.fromkeys(names) if key and key in _key(n).split()]
    keyed = {}
    for n in names:
        keyed.setdefault(_key(n), n)
    close = [keyed[k] for k in difflib.get_close_matches(key, list(keyed), n=5, cutoff=0.6)]
    return list(dict.fromkeys(words[:5] + close))[:6]


def _lookup(item: str, names: list[str], option: str) -> int | None:
    exact = [i for i, n in enumerate(names) if n == item]
    if len(exact) == 1:
        return exact[0]
    matches = exact or [i for i, n in enumerate(names) if _key(n) == _key(item)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        listed = ", ".join(f"{i} ({names[i]})" for i in matches)
        raise InvalidArgument(f"{option}: class name {item!r} is ambiguous: classes {listed} "
                              "all have it; give the index instead")
    return None


def resolve_classes(items, names: list[str], units: int, *, labelled: bool,
                    option: str = "--classes") -> list[int]:
    """Unit indices of the classes named in ``items``, in order, without repeats.

    Parameters
    ----------
    items : str, int or sequence of (str or int)
        A comma-separated string (:func:`split_classes`; the whole string is tried as one name
        first), one index or name, or a sequence of them.
    names : list of str
        The name of each unit (``len(names) == units`` when ``labelled``).
    units : int
        Units of the explained blob.
    labelled : bool
        Whether ``names`` are real class names (else only indices are accepted).

    Raises
    ------
    InvalidArgument
        An index out of range, an unknown name (with suggestions), an ambiguous name (with
        the indices), or a name without labels.
    """
    if items is None:
        return []
    if isinstance(items, str):
        whole = _lookup(items.strip(), names, option) if labelled and items.strip() else None
        items = [whole] if whole is not None else split_classes(items)
    elif not isinstance(items, (list, tuple)):
        items = [items]
    chosen = []
    for item in items:
        if isinstance(item, bool):
            raise InvalidArgument(f"{option}: {item!r} is not a class index or name")
        if isinstance(item, int) or (hasattr(item, "__index__") and not isinstance(item, str)):
            unit = int(item)
        else:
            item = str(item).strip()
            if item.lstrip("-").isdigit():
                unit = int(item)
            else:
                unit = _lookup(item, names, option) if labelled else None
                if unit is None:
                    raise InvalidArgument(_unknown(item, names, labelled, option))
        if not 0 <= unit < units:
            raise InvalidArgument(f"{option}: class {unit} is out of range; the blob has "
                                  f"{units} units (0-{units - 1})")
        if unit not in chosen:
            chosen.append(unit)
    return chosen


def _unknown(item: str, names, labelled: bool, option: str) -> str:
    if not labelled:
        hint = ("give a class index (names need labels: --labels FILE|imagenet, or labels= "
                "in Python)")
        return f"{option}: unknown class {item!r}; {hint}"
    close = _suggestions(item, names)
    did = f"; did you mean {', '.join(repr(n) for n in close)}?" if close else ""
    return (f"{option}: unknown class {item!r}{did} (give a class index or a name from the "
            "labels; names with a comma go in double quotes)")
