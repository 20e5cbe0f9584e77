"""Drawn cartoon faces whose brows, eyes and mouth show one of the emotions (or none).

The drawings only need to be distinct per class after the face encoder, because the projector on
top of it is trained; realism is not the goal. Every random choice lives in ``FaceStyle`` so
rendering is a pure function and the pixels repeat for a seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import cv2
import numpy as np

IMAGE_SIZE = 128
# Drawn at 2x and shrunk: smoother anti-aliased strokes, which a FER CNN sees as edges, not noise.
_SCALE = 2
_SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (255, 224, 189),
    (241, 194, 125),
    (224, 172, 105),
    (198, 134, 66),
    (141, 85, 36),
    (255, 205, 148),
)


@dataclass(frozen=True)
class FaceStyle:
    """Fixed appearance of one face; the emotion is passed separately.

    Attributes:
        center_dx: Horizontal head offset from the image centre, pixels.
        center_dy: Vertical head offset, pixels.
        head_w: Head half-width, pixels.
        head_h: Head half-height, pixels.
        skin: RGB skin colour.
        background: RGB background colour.
        thickness: Stroke width, pixels.
        angle: Head rotation, degrees.
        drift: Per-frame (dx, dy) motion in pixels.
    """

    center_dx: int
    center_dy: int
    head_w: int
    head_h: int
    skin: tuple[int, int, int]
    background: tuple[int, int, int]
    thickness: int
    angle: float
    drift: tuple[float, float]

    def to_dict(self) -> dict[str, object]:
        """Plain dict for the manifest's ``extra``."""
        return asdict(self)


def sample_face_style(rng: np.random.Generator) -> FaceStyle:
    """Draw a random appearance (position, size, colours, stroke width, tilt, motion)."""
    base = np.array(_SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))], dtype=float)
    skin = np.clip(base + rng.uniform(-12, 12, size=3), 0, 255).astype(int)
    background = rng.integers(40, 230, size=3)
    drift = rng.uniform(-1.5, 1.5, size=2)
    return FaceStyle(
        center_dx=int(rng.integers(-6, 7)),
        center_dy=int(rng.integers(-5, 6)),
        head_w=int(rng.integers(38, 46)),
        head_h=int(rng.integers(46, 54)),
        skin=(int(skin[0]), int(skin[1]), int(skin[2])),
        background=(int(background[0]), int(background[1]), int(background[2])),
        thickness=int(rng.integers(2, 4)),
        angle=round(float(rng.uniform(-7, 7)), 2),
        drift=(round(float(drift[0]), 2), round(float(drift[1]), 2)),
    )


def sample_face_geometry(level: str, rng: np.random.Generator) -> dict[str, float]:
    """Draw brow, eye and mouth geometry for ``level`` within what its description says.

    Every draw keeps the words the explanations use for the level true (a sad face's inner brows
    stay above its outer ones and its mouth turns down; an angry face's brows slant inward over a
    tight mouth), so any of them can stand for the level.

    Raises:
        ValueError: If ``level`` is unknown.
    """
    if level not in GEOMETRY_RANGES:
        raise ValueError(f"unknown face level {level!r}; expected one of {sorted(GEOMETRY_RANGES)}")
    return {name: round(float(rng.uniform(low, high)), 2) for name, (low, high) in GEOMETRY_RANGES[level].items()}


def render_face_frames(level: str, style: FaceStyle, num_frames: int,
                       geometry: Mapping[str, float] | None = None, still: bool = False) -> np.ndarray:
    """Render a short clip of one face with slight motion, or held still.

    Args:
        level: ``happy``, ``sad``, ``angry``, ``surprised`` or ``neutral``.
        style: Appearance from ``sample_face_style``.
        num_frames: Number of frames ``K``.
        geometry: Brow, eye and mouth geometry from ``sample_face_geometry``; the level's fixed
            geometry when None.
        still: Every frame is the first (no wobble, no drift).

    Returns:
        uint8 RGB frames ``(K, IMAGE_SIZE, IMAGE_SIZE, 3)``.

    Raises:
        ValueError: If ``level`` is unknown or ``num_frames`` < 1.
    """
    if level not in _FEATURES:
        raise ValueError(f"unknown face level {level!r}; expected one of {sorted(_FEATURES)}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    canvas = _draw_face(level, style, _FEATURES[level] if geometry is None else geometry)  # (2H, 2W, 3)
    size = IMAGE_SIZE * _SCALE
    frames = []
    for k in range(1 if still else num_frames):
        # Small rotation wobble plus drift: a face that moves a little, like a real talking head.
        angle = style.angle + 1.5 * np.sin(k * 1.3)
        matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
        matrix[:, 2] += np.array(style.drift) * k * _SCALE
        moved = cv2.warpAffine(
            canvas, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=style.background
        )
        frames.append(cv2.resize(moved, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA))
    if still:
        return np.repeat(frames[0][None], num_frames, axis=0)  # (K, H, W, 3)
    return np.stack(frames)  # (K, H, W, 3)


def render_background_frames(style: FaceStyle, num_frames: int) -> np.ndarray:
    """Frames of the clip's background with no face, for clips whose face channel is missing.

    A few soft, drifting blobs keep the picture from being a flat colour (a real empty scene is
    not flat either) while nothing in it looks like eyes, brows or a mouth.

    Args:
        style: Appearance from ``sample_face_style``; only its background, offsets and drift are used.
        num_frames: Number of frames ``K``.

    Returns:
        uint8 RGB frames ``(K, IMAGE_SIZE, IMAGE_SIZE, 3)``.

    Raises:
        ValueError: If ``num_frames`` < 1.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    background = np.array(style.background, dtype=float)
    # Lighter and darker shades of the background, placed by the style's fixed numbers.
    shades = [np.clip(background * factor, 0, 255) for factor in (0.8, 1.15, 0.9)]
    anchors = [(30 + style.center_dx, 40), (92, 70 + style.center_dy), (55, 105)]
    frames = []
    for k in range(num_frames):
        frame = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        frame[:] = style.background
        for (x, y), shade, radius in zip(anchors, shades, (22, 16, 12), strict=True):
            centre = (int(round(x + style.drift[0] * k)), int(round(y + style.drift[1] * k)))
            color = (int(shade[0]), int(shade[1]), int(shade[2]))
            cv2.circle(frame, centre, radius, color, -1, cv2.LINE_AA)
        frames.append(cv2.GaussianBlur(frame, (0, 0), 3.0))
    return np.stack(frames)  # (K, H, W, 3)


def _draw_face(level: str, style: FaceStyle, feat: Mapping[str, float]) -> np.ndarray:
    s = _SCALE
    size = IMAGE_SIZE * s
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = style.background
    cx, cy = (IMAGE_SIZE // 2 + style.center_dx) * s, (IMAGE_SIZE // 2 + style.center_dy) * s
    hw, hh = style.head_w * s, style.head_h * s
    ink = (30, 22, 20)
    th = style.thickness * s
    cv2.ellipse(img, (cx, cy), (hw, hh), 0, 0, 360, style.skin, -1, cv2.LINE_AA)
    cv2.ellipse(img, (cx, cy), (hw, hh), 0, 0, 360, ink, th, cv2.LINE_AA)
    eye_dx, eye_y = int(hw * 0.42), cy - int(hh * 0.2)
    for side in (-1, 1):
        ex = cx + side * eye_dx
        ew, eh = int(feat["eye_w"] * s), int(feat["eye_h"] * s)
        cv2.ellipse(img, (ex, eye_y), (ew, eh), 0, 0, 360, (250, 250, 250), -1, cv2.LINE_AA)
        cv2.ellipse(img, (ex, eye_y), (ew, eh), 0, 0, 360, ink, max(2, th // 2), cv2.LINE_AA)
        cv2.circle(img, (ex, eye_y), int(3 * s), ink, -1, cv2.LINE_AA)
        # Brows: outer and inner end heights above the eye; the slant carries sad/angry.
        outer = (ex + side * int(11 * s), eye_y - int(feat["brow_outer"] * s))
        inner = (ex - side * int(10 * s), eye_y - int(feat["brow_inner"] * s))
        cv2.line(img, outer, inner, ink, th + s, cv2.LINE_AA)
    nose_top, nose_bottom = (cx, cy - int(hh * 0.02)), (cx - 3 * s, cy + int(hh * 0.18))
    cv2.line(img, nose_top, nose_bottom, ink, max(2, th // 2), cv2.LINE_AA)
    _draw_mouth(img, level, feat, (cx, cy + int(hh * 0.48)), th, ink)
    return img


def _draw_mouth(img: np.ndarray, level: str, feat: Mapping[str, float], center: tuple[int, int], th: int,
                ink: tuple) -> None:
    s = _SCALE
    mx, my = center
    half = int(feat["mouth_w"] * s)
    if level == "surprised":
        cv2.ellipse(img, (mx, my), (int(8 * s), int(11 * s)), 0, 0, 360, (90, 20, 30), -1, cv2.LINE_AA)
        cv2.ellipse(img, (mx, my), (int(8 * s), int(11 * s)), 0, 0, 360, ink, th, cv2.LINE_AA)
        return
    # Parabola: positive curve lifts the corners (smile), negative drops them (frown).
    xs = np.linspace(-half, half, 25)
    ys = my - feat["mouth_curve"] * s * (xs / half) ** 2 + feat["mouth_curve"] * s / 2
    points = np.stack([mx + xs, ys], axis=1).round().astype(np.int32)
    cv2.polylines(img, [points], False, ink, th + (s if level == "angry" else 0), cv2.LINE_AA)


# Geometry per level in base-resolution pixels.
_FEATURES: dict[str, dict[str, float]] = {
    "neutral": {"eye_w": 7, "eye_h": 5, "brow_outer": 12, "brow_inner": 12, "mouth_w": 13, "mouth_curve": 0},
    "happy": {"eye_w": 7, "eye_h": 4, "brow_outer": 13, "brow_inner": 13, "mouth_w": 16, "mouth_curve": 10},
    "sad": {"eye_w": 7, "eye_h": 4, "brow_outer": 9, "brow_inner": 18, "mouth_w": 13, "mouth_curve": -9},
    "angry": {"eye_w": 7, "eye_h": 4, "brow_outer": 14, "brow_inner": 6, "mouth_w": 9, "mouth_curve": -2},
    "surprised": {"eye_w": 8, "eye_h": 8, "brow_outer": 20, "brow_inner": 21, "mouth_w": 8, "mouth_curve": 0},
}

# Ranges of each level's geometry for ``sample_face_geometry``, base-resolution pixels. They hold
# the fixed geometry above and stay within each level's description.
GEOMETRY_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "neutral": {"eye_w": (6, 8), "eye_h": (4, 6), "brow_outer": (9, 14), "brow_inner": (9, 14), "mouth_w": (10, 15),
                "mouth_curve": (-1, 1)},
    "happy": {"eye_w": (6, 8), "eye_h": (3, 5), "brow_outer": (11, 15), "brow_inner": (11, 15), "mouth_w": (14, 20),
              "mouth_curve": (8, 14)},
    "sad": {"eye_w": (7, 9), "eye_h": (2, 5), "brow_outer": (3, 11), "brow_inner": (16, 26), "mouth_w": (8, 14),
            "mouth_curve": (-16, -8)},
    "angry": {"eye_w": (6, 8), "eye_h": (2, 4), "brow_outer": (14, 24), "brow_inner": (0, 6), "mouth_w": (6, 11),
              "mouth_curve": (-8, -2)},
    "surprised": {"eye_w": (7, 9), "eye_h": (7, 10), "brow_outer": (18, 28), "brow_inner": (18, 28), "mouth_w": (8, 8),
                  "mouth_curve": (0, 0)},
}
