"""Per-dimension feature moments (count, sum, sum of squares), accumulated without holding features.

Projector calibration (:mod:`affect_llm.training.calibration`) and per-speaker standardisation
(:mod:`affect_llm.features.speakers`) both need each feature dimension's mean and spread over many
clips: summing float64 moments item by item gives exactly the statistics of the concatenation, and
sums from several processes add up with one all-reduce.

Shape letters: T steps, D encoder width.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from affect_llm.modeling.media import MediaInputs, ModalityInput


def step_moments(part: ModalityInput) -> torch.Tensor:
    """``(3, D)`` float64 count, sum and sum of squares over the valid steps of a features input."""
    valid = part.features[part.feature_mask.bool()].double()  # (sum T, D)
    return torch.stack([torch.full_like(valid[0], valid.shape[0]), valid.sum(0), (valid**2).sum(0)])


class FeatureMoments:
    """Running count, sum and sum of squares of each feature dimension, per modality."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}  # modality -> (3, D) float64: count, sum, sum of squares

    def add(self, media: MediaInputs) -> None:
        for modality, part in media.items():
            if not part.is_features:
                continue
            moments = step_moments(part)
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
