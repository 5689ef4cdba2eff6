"""Progress bars, one way: tqdm when a label is given, the bare iterable otherwise (tqdm is imported only then)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator, Sequence, TypeVar

if TYPE_CHECKING:  # the panel loads this module at start, without PyTorch
    from .ranks import Ranks

Item = TypeVar("Item")


def progress_bar(items: Iterable[Item], label: str | None, unit: str = "it", total: int | None = None
                 ) -> Iterable[Item]:
    """``items`` with a tqdm bar labelled ``label`` (on stderr), or ``items`` itself when ``label`` is None."""
    if not label:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=label, unit=unit, total=total)


def shared_progress(items: Sequence[Item], ranks: Ranks, label: str | None, unit: str = "it") -> Iterator[Item]:
    """This rank's share of ``items`` (:meth:`ranks.Ranks.share`); rank 0 draws one bar over every rank's: it
    counts its own items times the number of ranks (the shares differ by one item at most), so the bar follows the
    whole run without the ranks waiting for one another, and ends at ``len(items)``."""
    share = ranks.share(items)
    if not (label and ranks.leader):
        yield from share
        return
    from tqdm import tqdm

    with tqdm(desc=label if ranks.size == 1 else f"{label} ({ranks.size} ranks)", unit=unit, total=len(items)) as bar:
        for item in share:
            yield item
            bar.update(min(ranks.size, bar.total - bar.n))
        bar.update(bar.total - bar.n)  # the other ranks' last items
