"""Per-channel quantiles of a stream of activations in fixed memory: adaptive histograms with exact refinement.

Network dissection needs, for every filter, the level exceeded by only the top 1 % of its activations over the
whole dataset. Stacking the activations does not scale (one 240×240 slice of a 64-filter layer is 15 MB), so
each channel keeps a histogram of ``bins`` equal bins:

1. **Pass 1** (:meth:`StreamingQuantiles.add`): the range starts at the first batch's min..max and, when a later
   value falls outside it, doubles (merging neighbouring bin pairs) towards that side until it fits — counts are
   never lost or re-binned approximately, so after the pass the histogram is exact for its bin edges.
2. **Refinement** (:meth:`start_refinement`, then :meth:`add` again over the same data): a second histogram of
   ``bins`` bins spans only the bin of the lower order statistic, and the smallest value above that span is kept
   exactly, so the error bound shrinks to (bin width)/bins — ≈ 5e-7 of the range for 2048 bins, far below float32
   differences that matter for a mask.

The quantile interpolates between the two order statistics around rank ``q·(n−1)``, each located in its own bin
(or, for the upper one above the refined span, known exactly): in a sparse tail the two can lie many bins apart,
and interpolating inside one bin would then miss by the gap (found by ``bench``'s exact check on a 15×15 layer).

Memory is ``channels × bins`` counts (int64) per stage, whatever the number of values. The state round-trips
through :meth:`state_dict` (a pass continued from it gives the same quantiles, as the tests check; ``dissect`` runs
its passes in one go and does not save it). The rank convention is torch.quantile's (linear interpolation between
order statistics, rank ``q·(n−1)``).
"""

from __future__ import annotations

import torch

from ..errors import UsageError
from ..ranks import Ranks


class StreamingQuantiles:
    """Quantile ``q`` of each of ``channels`` streams; feed ``(channels, values)`` tensors to :meth:`add`."""

    def __init__(self, channels: int, q: float, bins: int = 2048) -> None:
        if not 0 < q < 1:
            raise UsageError(f"quantile must lie in (0, 1), got {q}")
        if bins < 16 or bins % 2:
            raise UsageError(f"bins must be an even number ≥ 16, got {bins}")
        self.channels, self.q, self.bins = channels, q, bins
        self.low = torch.zeros(channels, dtype=torch.float64)
        self.width = torch.zeros(channels, dtype=torch.float64)  # 0 until the first batch
        self.counts = torch.zeros(channels, bins, dtype=torch.int64)
        self.total = 0
        self.stage = 1
        self.below = torch.zeros(channels, dtype=torch.int64)  # stage 2: values under the refined span
        self.above_min = torch.full((channels,), float("inf"), dtype=torch.float64)  # stage 2: least value over it

    # -- feeding -----------------------------------------------------------------------------------------------
    def add(self, values: torch.Tensor) -> None:
        """Count a batch ``(channels, n)`` (any float dtype, any device; reduced on that device)."""
        if values.ndim != 2 or values.shape[0] != self.channels:
            raise ValueError(f"expected values ({self.channels}, n), got {tuple(values.shape)}")
        if values.shape[1] == 0:
            return
        values = values.detach().double()
        device = values.device
        if self.stage == 1:
            self.total += values.shape[1]
            self._fit_range(values.min(dim=1).values.cpu(), values.max(dim=1).values.cpu())
            self.counts += self._histogram(values, self.low.to(device), self.width.to(device), clamp=True)
        else:
            low, width = self.low.to(device), self.width.to(device)
            high = (low + width * self.bins)[:, None]
            self.below += (values < low[:, None]).sum(dim=1).cpu()
            above = torch.where(values >= high, values, torch.full_like(values, float("inf")))
            self.above_min = torch.minimum(self.above_min, above.min(dim=1).values.cpu())
            inside = (values >= low[:, None]) & (values < high)
            # values outside the refined span go to an overflow index dropped below
            self.counts += self._histogram(torch.where(inside, values, torch.full_like(values, float("nan"))),
                                           low, width, clamp=False)

    def _histogram(self, values: torch.Tensor, low: torch.Tensor, width: torch.Tensor, clamp: bool) -> torch.Tensor:
        index = torch.floor((values - low[:, None]) / width[:, None])
        valid = ~torch.isnan(index)
        index = index.nan_to_num(0).clamp(0, self.bins - 1).long() if clamp else index.nan_to_num(0).long()
        flat = (index + torch.arange(self.channels, device=values.device)[:, None] * self.bins)[valid]
        return torch.bincount(flat, minlength=self.channels * self.bins).view(self.channels, self.bins).cpu()

    def _fit_range(self, batch_min: torch.Tensor, batch_max: torch.Tensor) -> None:
        fresh = self.width == 0
        if fresh.any():
            span = (batch_max - batch_min)[fresh]
            # a constant channel still needs a positive width; spread a little beyond the first batch's range
            span = torch.where(span > 0, span, batch_max[fresh].abs().clamp(min=1e-6)) * 1.01
            self.low[fresh] = batch_min[fresh] - 0.005 * span
            self.width[fresh] = span / self.bins
        for channel in torch.nonzero((batch_min < self.low) | (batch_max >= self.low + self.width * self.bins)):
            channel = int(channel)
            while batch_max[channel] >= self.low[channel] + self.width[channel] * self.bins:
                self._double(channel, upward=True)
            while batch_min[channel] < self.low[channel]:
                self._double(channel, upward=False)

    def _double(self, channel: int, upward: bool) -> None:
        """Double one channel's range: pairs of bins merge, the range grows on one side by its own span."""
        merged = self.counts[channel].view(-1, 2).sum(dim=1)
        empty = torch.zeros_like(merged)
        if upward:
            self.counts[channel] = torch.cat([merged, empty])
        else:
            self.counts[channel] = torch.cat([empty, merged])
            self.low[channel] -= self.width[channel] * self.bins
        self.width[channel] *= 2

    # -- answers ------------------------------------------------------------------------------------------------
    def _locate(self, order: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per channel: the bin holding the value of 0-based ``order`` (a rank), and the rank's offset (in values)
        inside that bin; in stage 2 ranks count from the refined span's floor."""
        position = order - self.below.double()
        cumulative = self.counts.cumsum(dim=1).double()
        index = torch.searchsorted(cumulative, position[:, None], right=True)[:, 0].clamp(max=self.bins - 1)
        before = cumulative.gather(1, (index - 1).clamp(min=0)[:, None])[:, 0] * (index > 0)
        return index, position - before

    def _order_statistic(self, order: int) -> torch.Tensor:
        """The ``order``-th smallest value per channel: within its bin (error < one bin width), or exact when it
        lies above the refined span."""
        index, offset = self._locate(order)
        count = self.counts.gather(1, index[:, None])[:, 0].double().clamp(min=1)
        estimate = self.low + self.width * (index.double() + ((offset + 0.5) / count).clamp(0, 1))
        if self.stage == 2:
            above = order - self.below >= self.counts.sum(dim=1)
            estimate = torch.where(above, self.above_min, estimate)
        return estimate

    def quantile(self) -> torch.Tensor:
        """Current estimate per channel (float64): linear between the order statistics around rank q·(n−1)."""
        if self.total == 0:
            raise ValueError("no values were added")
        rank = self.q * (self.total - 1)
        lower = int(rank)
        fraction = rank - lower
        low_value = self._order_statistic(lower)
        if fraction == 0 or lower + 1 >= self.total:
            return low_value
        return low_value + fraction * (self._order_statistic(lower + 1) - low_value)

    def error_bound(self) -> torch.Tensor:
        """Worst-case absolute error of :meth:`quantile` per channel: the width of the bin it interpolates in."""
        return self.width.clone()

    def start_refinement(self, ranks: Ranks = Ranks()) -> None:
        """Zoom into the bin that holds the quantile; then :meth:`add` the *same* data again. Under torchrun
        (``ranks`` of a joined run) every rank has counted its own share of the data: the span to refine is then
        found from all ranks' histograms (:meth:`_span_across`) and is the same on every rank."""
        if self.stage != 1:
            raise ValueError("refinement already started")
        if ranks.size > 1:
            self.low, self.width, self.total = self._span_across(ranks)
        else:
            if self.total == 0:
                raise ValueError("no values were added")
            index, _ = self._locate(int(self.q * (self.total - 1)))  # the bin of the lower order statistic
            self.low = self.low + self.width * index.double()
            self.width = self.width / self.bins
        self.counts = torch.zeros_like(self.counts)
        self.below = torch.zeros_like(self.below)  # recounted exactly during the refinement pass
        self.above_min = torch.full_like(self.above_min, float("inf"))
        self.stage = 2

    def _span_across(self, ranks: Ranks) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The refined span's floor and bin width, and the total count, over every rank's stage-1 histogram.

        The ranks' bins do not line up (each range grew from its own first batch), so counts are bounded instead
        of summed: on an even grid of ``bins`` edges over the union of the ranks' ranges, the number of values
        below each edge lies between the counts of the rank bins wholly below it and of those starting below it.
        The span runs from the highest edge with at most ``order`` values surely below it to the lowest edge with
        more surely below, so it holds the order statistic; it is a few rank bins wide, and the refinement's error
        bound (its width over ``bins``) stays of the one-process size."""
        total = int(ranks.sum(torch.tensor([self.total]))[0])
        if total == 0:
            raise ValueError("no values were added")
        counted = self.total > 0  # a rank with no data (more ranks than cases) has no range
        low = ranks.min(self.low if counted else torch.full_like(self.low, float("inf")))
        high = ranks.max(self.low + self.width * self.bins if counted else torch.full_like(self.low, -float("inf")))
        edges = low[:, None] + (high - low)[:, None] * torch.linspace(0, 1, self.bins + 1, dtype=torch.float64)
        surely_below = torch.zeros(self.channels, self.bins + 1, dtype=torch.int64)
        maybe_below = torch.zeros_like(surely_below)
        if counted:
            cumulative = torch.nn.functional.pad(self.counts.cumsum(dim=1), (1, 0))  # [i]: the first i bins
            position = (edges - self.low[:, None]) / self.width[:, None]
            slack = 1e-9 * self.bins  # rounding never moves a bin to the wrong side of an edge
            surely_below = cumulative.gather(1, torch.floor(position - slack).clamp(0, self.bins).long())
            maybe_below = cumulative.gather(1, torch.ceil(position + slack).clamp(0, self.bins).long())
        surely_below, maybe_below = ranks.sum(surely_below), ranks.sum(maybe_below)
        order = int(self.q * (total - 1))
        start = (maybe_below <= order).sum(dim=1) - 1  # maybe_below grows with the edge; edge 0 has none below
        stop = (surely_below <= order).sum(dim=1).clamp(max=self.bins)  # the last edge has all values below
        floor, ceiling = edges.gather(1, start[:, None])[:, 0], edges.gather(1, stop[:, None])[:, 0]
        return floor, (ceiling - floor) / self.bins, total

    def combine(self, ranks: Ranks) -> None:
        """After the refinement pass under torchrun: every rank's refined counts joined, so that :meth:`quantile`
        answers for all ranks' data (the refined bins are the same on every rank: they add up exactly)."""
        if self.stage != 2:
            raise ValueError("ranks combine after the refinement pass")
        if ranks.size == 1:
            return
        self.counts, self.below = ranks.sum(self.counts), ranks.sum(self.below)
        self.above_min = ranks.min(self.above_min)

    # -- persistence --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"channels": self.channels, "q": self.q, "bins": self.bins, "low": self.low.clone(),
                "width": self.width.clone(), "counts": self.counts.clone(), "total": self.total,
                "stage": self.stage, "below": self.below.clone(), "above_min": self.above_min.clone()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "StreamingQuantiles":
        made = cls(int(state["channels"]), float(state["q"]), int(state["bins"]))
        for name in ("low", "width", "counts", "below", "above_min"):
            setattr(made, name, state[name].clone())
        made.total, made.stage = int(state["total"]), int(state["stage"])
        return made
