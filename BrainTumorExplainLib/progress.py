"""Progress bars, one way: tqdm when a label is given, the bare iterable otherwise (tqdm is imported only then)."""

from __future__ import annotations

from typing import Iterable, TypeVar

Item = TypeVar("Item")


def progress_bar(items: Iterable[Item], label: str | None, unit: str = "it", total: int | None = None
                 ) -> Iterable[Item]:
    """``items`` with a tqdm bar labelled ``label`` (on stderr), or ``items`` itself when ``label`` is None."""
    if not label:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=label, unit=unit, total=total)
