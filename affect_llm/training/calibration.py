"""Projector standardisation from feature statistics, accumulated batch by batch across processes.

A fresh projector standardises its input with the mean and standard deviation of each feature
dimension over the training clips (:meth:`affect_llm.modeling.projectors.MediaProjector.calibrate`).
Concatenating every clip's features to compute them does not fit a large corpus, so each process
sums counts, sums and sums of squares (float64) over its share of the rows and one all-reduce
adds the processes' sums: every process then sets the same statistics, exactly those of the
concatenation, with nothing per clip held in memory.

Shape letters: T steps, D encoder width.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from affect_llm.modeling.media import MediaInputs

# At most this many training rows are read: the statistics of a few thousand clips are as good as
# those of a million, and without a cache each one is decoded and encoded.
CALIBRATION_MAX_ROWS = 4096


class FeatureMoments:
    """Running count, sum and sum of squares of each feature dimension, per modality."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}  # modality -> (3, D) float64: count, sum, sum of squares

    def add(self, media: MediaInputs) -> None:
        for modality, part in media.items():
            if not part.is_features:
                continue
            valid = part.features[part.feature_mask.bool()].double()  # (sum T, D)
            moments = torch.stack([torch.full_like(valid[0], valid.shape[0]), valid.sum(0), (valid**2).sum(0)])
            previous = self.sums.get(modality)
            self.sums[modality] = moments if previous is None else previous + moments

    def add_all(self, batches: Iterable[dict[str, MediaInputs]]) -> None:
        for batch in batches:
            for media in batch.values():
                self.add(media)

    def reduced(self, widths: dict[str, int], reduce: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every process's sums added up (``reduce``: a sum all-reduce), per modality of ``widths``.

        Every process reduces the same modalities in the same order, whether or not its share held any.
        """
        return {m: reduce(self.sums.get(m, torch.zeros(3, width, dtype=torch.float64)))
                for m, width in sorted(widths.items())}


def mean_and_std(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Mean and unbiased standard deviation (clamped as ``calibrate`` does) from (count, sum, sum of squares)."""
    count = moments[0, 0]
    if count < 2:
        return None
    mean = moments[1] / count
    variance = (moments[2] - count * mean**2) / (count - 1)
    return mean.float(), variance.clamp(min=0).sqrt().float().clamp(min=1e-4)


@torch.no_grad()
def set_projector_statistics(projector: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """What ``MediaProjector.calibrate`` sets, from statistics computed elsewhere."""
    projector.feature_mean.copy_(mean.to(projector.feature_mean.device))
    projector.feature_std.copy_(std.to(projector.feature_std.device))
