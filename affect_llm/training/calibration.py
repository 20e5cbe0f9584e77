"""Projector standardisation from feature statistics, accumulated batch by batch across processes.

A fresh projector standardises its input with the mean and standard deviation of each feature
dimension over the training clips (:meth:`affect_llm.modeling.projectors.MediaProjector.calibrate`).
Concatenating every clip's features to compute them does not fit a large corpus, so each process
sums counts, sums and sums of squares (float64) over its share of the rows and one all-reduce
adds the processes' sums: every process then sets the same statistics, exactly those of the
concatenation, with nothing per clip held in memory (:mod:`affect_llm.features.moments`).

Shape letters: T steps, D encoder width.
"""

from __future__ import annotations

import torch

# At most this many training rows are read: the statistics of a few thousand clips are as good as
# those of a million, and without a cache each one is decoded and encoded.
CALIBRATION_MAX_ROWS = 4096


@torch.no_grad()
def set_projector_statistics(projector: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """What ``MediaProjector.calibrate`` sets, from statistics computed elsewhere."""
    projector.feature_mean.copy_(mean.to(projector.feature_mean.device))
    projector.feature_std.copy_(std.to(projector.feature_std.device))
