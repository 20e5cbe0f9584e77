"""What the face encoder's own expression head says about real photos and about the drawn faces.

The embedded face encoder is the FER2013 mini-Xception: besides the features the face projector
reads, it has the 7-way expression classifier it was trained with. Asking that head tells apart two
reasons a real face can be misread: the face was not found or not seen (the head is wrong too), or
the projector learned a mapping from the drawn training faces that does not carry over to real ones
(the head is right). Faces are cropped as featurization crops them (``FaceCropper`` defaults).

    python scripts/face_head.py                          # after scripts/quickstart.sh
    python scripts/face_head.py --drawn-clips 100        # fewer drawn faces

It prints each labelled real photo with the head's answer, then, per drawn emotion, how the head
reads the synthetic set's training faces.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from affect_llm.configuration import FER_LABELS
from affect_llm.data.faces import FaceCropper
from affect_llm.data.manifest import load_manifest
from affect_llm.labels.taxonomy import normalize_labels
from affect_llm.modeling.face_cnn import FerMiniXceptionModel
from affect_llm.paths import models_dir
from affect_llm.processing.feature_extraction import prepare_faces


def base_word(label: str) -> str:
    """The taxonomy's base word for an emotion label (the label itself when the taxonomy lacks it)."""
    known = normalize_labels([label])[0]
    return known[0] if known else label


def head_answers(model: FerMiniXceptionModel, cropper: FaceCropper, images: list[Path]) -> list[tuple[str, str]]:
    """(expression as the taxonomy's base word, how the face was found) for each image file."""
    crops, methods = [], []
    for path in images:
        frame = cv2.imread(str(path))
        if frame is None:
            raise FileNotFoundError(f"{path}: not a readable image")
        crop, meta = cropper.crop_with_meta(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        crops.append(crop)
        methods.append(meta.method)
    pixels = prepare_faces(np.stack(crops), model.config.image_size, model.config.num_channels)
    with torch.no_grad():
        best = model.logits(pixels).argmax(-1).tolist()
    return [(base_word(FER_LABELS[i]), method) for i, method in zip(best, methods, strict=True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=models_dir() / "fer-mini-xception")
    parser.add_argument("--real", type=Path, default=Path("outputs/pyfeat/manifest.jsonl"))
    parser.add_argument("--drawn", type=Path, default=Path("outputs/synth/manifest.jsonl"))
    parser.add_argument("--drawn-clips", type=int, default=300, help="synthetic training faces to read")
    args = parser.parse_args()
    for path in (args.model, args.real, args.drawn):
        if not path.exists():
            print(f"{path} is missing: run scripts/quickstart.sh first (or pass it)", file=sys.stderr)
            return 2
    torch.set_num_threads(1)
    model = FerMiniXceptionModel.from_pretrained(args.model).eval()
    cropper = FaceCropper()

    real = [row for row in load_manifest(args.real) if row.image and row.labels]
    answers = head_answers(model, cropper, [row.media_path("image") for row in real])
    right = 0
    print("labelled real photos (file: label -> expression head, face found by)")
    for row, (said, method) in zip(real, answers, strict=True):
        right += said in {base_word(label) for label in row.labels}
        print(f"  {row.image}: {row.labels[0]} -> {said} ({method})")
    print(f"  {right} of {len(real)} right")

    # Drawn faces of the synthetic training split whose face channel is present, by drawn emotion.
    drawn = [row for row in load_manifest(args.drawn) if row.split == "train" and row.image
             and "video" in (row.channels or ()) and isinstance(row.extra.get("cues"), dict)]
    drawn = drawn[: args.drawn_clips]
    answers = head_answers(model, cropper, [row.media_path("image") for row in drawn])
    tally: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row, (said, _) in zip(drawn, answers, strict=True):
        tally[base_word(row.extra["cues"]["face"])][said] += 1
    print(f"drawn training faces ({len(drawn)}): drawn emotion -> what the expression head reads")
    for level, counts in sorted(tally.items()):
        agree = counts[level] / sum(counts.values())
        print(f"  {level}: {dict(counts.most_common())} (agrees {agree:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
