"""The FER face encoder's own expression reading of drawn faces, for the synthetic set's faces.

``affect-llm data synth --faces-read-by fer-mini-xception`` draws every face until this reader
reads it as the emotion it was drawn with (``affect_llm.data.synth.generate.FaceReader``). The
encoder was trained on photos; drawn with fixed geometry, it reads only happy faces as drawn (sad
ones as fear, angry and neutral ones as surprise), so a projector trained on its expression
features of drawings learns a mapping that real faces do not follow. Faces it reads as drawn give
those features the meaning they have for photos.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from affect_llm.configuration import FER_LABELS
from affect_llm.data.faces import FaceCropper
from affect_llm.hashing import file_sha256
from affect_llm.modeling.face_cnn import FerMiniXceptionModel
from affect_llm.processing.feature_extraction import prepare_faces

# FER2013's class names in the synthetic set's face levels (its other classes stay as they are).
_LEVEL_OF_FER_LABEL = {"surprise": "surprised"}

# A reading counts only when its probability leads the runner-up's by this much. Drawn faces read
# as drawn by the argmax alone led by as little as 0.02 (sad, angry), and the embedded default
# misread 2 of 5 such sad still images: a near tie carries almost none of the face's emotion.
MIN_MARGIN = 0.2
UNSURE = "unsure"


class ExpressionReader:
    """Reads frames through the same face crop and encoder input as featurization.

    Attributes:
        identity: The encoder folder's name and its weights' sha256 (the synthetic set's stamp keeps it).
    """

    def __init__(self, folder: str | Path, min_margin: float = MIN_MARGIN) -> None:
        """
        Args:
            folder: A prepared FER mini-Xception folder (``affect-llm models prepare fer-mini-xception``).
            min_margin: Probability by which a reading must lead the runner-up (``UNSURE`` otherwise).

        Raises:
            FileNotFoundError: If ``folder`` is missing.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no face encoder folder (run: affect-llm models prepare "
                                    "fer-mini-xception)")
        self.model = FerMiniXceptionModel.from_pretrained(folder).eval()
        self.cropper = FaceCropper()
        self.min_margin = min_margin
        self._process = os.getpid()
        weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
        self.identity = f"{folder.name}#" + "+".join(file_sha256(path)[:12] for path in weights)
        if min_margin:
            self.identity += f"@margin{min_margin:g}"

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> list[str]:
        """The expression on each uint8 RGB frame ``(N, H, W, 3)``, in the set's face level names, or
        ``UNSURE`` where it does not lead the runner-up by ``min_margin``."""
        if os.getpid() != self._process:
            # A forked worker (data synth's rendering pool): torch's OpenMP threads do not survive
            # fork, so it runs on one thread, as DataLoader workers do.
            torch.set_num_threads(1)
            self._process = os.getpid()
        crops, _ = self.cropper.crop_frames(frames)
        pixels = prepare_faces(crops, self.model.config.image_size, self.model.config.num_channels)
        top = self.model.logits(pixels).softmax(-1).topk(2, dim=-1)
        sure = (top.values[:, 0] - top.values[:, 1] >= self.min_margin).tolist()
        return [_LEVEL_OF_FER_LABEL.get(FER_LABELS[i], FER_LABELS[i]) if ok else UNSURE
                for i, ok in zip(top.indices[:, 0].tolist(), sure, strict=True)]
