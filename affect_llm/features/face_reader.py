"""The FER face encoder's own expression reading of drawn faces, for the synthetic set's faces.

``affect-llm data synth --faces-read-by fer-mini-xception`` draws every face until this reader
reads it as the emotion it was drawn with (``affect_llm.data.synth.generate.FaceReader``). The
encoder was trained on photos; drawn with fixed geometry, it reads only happy faces as drawn (sad
ones as fear, angry and neutral ones as surprise), so a projector trained on its expression
features of drawings learns a mapping that real faces do not follow. Faces it reads as drawn give
those features the meaning they have for photos.
"""

from __future__ import annotations

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


class ExpressionReader:
    """Reads frames through the same face crop and encoder input as featurization.

    Attributes:
        identity: The encoder folder's name and its weights' sha256 (the synthetic set's stamp keeps it).
    """

    def __init__(self, folder: str | Path) -> None:
        """
        Args:
            folder: A prepared FER mini-Xception folder (``affect-llm models prepare fer-mini-xception``).

        Raises:
            FileNotFoundError: If ``folder`` is missing.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no face encoder folder (run: affect-llm models prepare "
                                    "fer-mini-xception)")
        self.model = FerMiniXceptionModel.from_pretrained(folder).eval()
        self.cropper = FaceCropper()
        weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
        self.identity = f"{folder.name}#" + "+".join(file_sha256(path)[:12] for path in weights)

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> list[str]:
        """The expression on each uint8 RGB frame ``(N, H, W, 3)``, in the set's face level names."""
        crops, _ = self.cropper.crop_frames(frames)
        pixels = prepare_faces(crops, self.model.config.image_size, self.model.config.num_channels)
        best = self.model.logits(pixels).argmax(-1).tolist()
        return [_LEVEL_OF_FER_LABEL.get(FER_LABELS[i], FER_LABELS[i]) for i in best]
