from __future__ import annotations

import numpy as np
import pytest

from affect_llm.data.faces import FaceCropper, find_cascade_file


def test_cascade_is_found_offline() -> None:
    assert find_cascade_file().name == "haarcascade_frontalface_default.xml"


def test_real_face_is_found_and_cropped_square() -> None:
    data = pytest.importorskip("skimage.data")
    image = data.astronaut()  # (512, 512, 3) RGB, one frontal face, bundled with scikit-image
    frames = np.stack([image, np.zeros_like(image)])  # (2, H, W, 3): a face, then a black frame
    crops, found = FaceCropper(face_size=48).crop_frames(frames)
    assert crops.shape == (2, 48, 48, 3) and crops.dtype == np.uint8
    assert found == [True, False]
    x, y, w, h = FaceCropper().detect(image)
    # The astronaut's face is in the upper middle of the photo.
    assert 100 < x + w / 2 < 300 and 50 < y + h / 2 < 250
