"""What the face encoder's own expression head says about real photos and about the drawn faces.

The embedded face encoder is the FER2013 mini-Xception: besides the features the face projector
reads, it has the 7-way expression classifier it was trained with. Asking that head tells apart two
reasons a real face can be misread: the face was not found or not seen (the head is wrong too), or
the projector learned a mapping from the drawn training faces that does not carry over to real ones
(the head is right). Faces are cropped as featurization crops them (``FaceCropper`` defaults).

    python scripts/face_head.py                          # after scripts/quickstart.sh
    python scripts/face_head.py --drawn-clips 100        # fewer drawn faces
    python scripts/face_head.py --probe                  # and what a probe on drawn faces carries over

It prints each labelled real photo with the head's answer, then, per drawn emotion, how the head
reads the synthetic set's training faces. ``--probe`` fits a logistic regression on the drawn faces'
encoder outputs (standardised) for each part the face projector can read (``model.face_features``):
the last block's features and the expression logits; it prints its cross-validated accuracy on the
drawn faces and its answers on the labelled real photos.
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


def face_pixels(model: FerMiniXceptionModel, cropper: FaceCropper, images: list[Path]) -> tuple[torch.Tensor, list[str]]:
    """The encoder's input for each image file, cropped as featurization crops, and how each face was found."""
    crops, methods = [], []
    for path in images:
        frame = cv2.imread(str(path))
        if frame is None:
            raise FileNotFoundError(f"{path}: not a readable image")
        crop, meta = cropper.crop_with_meta(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        crops.append(crop)
        methods.append(meta.method)
    return prepare_faces(np.stack(crops), model.config.image_size, model.config.num_channels), methods


def head_answers(model: FerMiniXceptionModel, cropper: FaceCropper, images: list[Path]) -> list[tuple[str, str]]:
    """(expression as the taxonomy's base word, how the face was found) for each image file."""
    pixels, methods = face_pixels(model, cropper, images)
    with torch.no_grad():
        best = model.logits(pixels).argmax(-1).tolist()
    return [(base_word(FER_LABELS[i]), method) for i, method in zip(best, methods, strict=True)]


def encoder_outputs(model: FerMiniXceptionModel, cropper: FaceCropper, images: list[Path]) -> np.ndarray:
    """The encoder's pooled output ``(N, D)`` for each image: last-block features, then the logits."""
    pixels, _ = face_pixels(model, cropper, images)
    with torch.no_grad():
        return model(pixels, return_dict=True).pooler_output.numpy()


def probe(model: FerMiniXceptionModel, cropper: FaceCropper, drawn: list, real: list) -> None:
    """Fit on drawn faces, per part of the encoder's output; print drawn accuracy and real answers."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    drawn_x = encoder_outputs(model, cropper, [row.media_path("image") for row in drawn])
    drawn_y = [base_word(row.extra["cues"]["face"]) for row in drawn]
    real_x = encoder_outputs(model, cropper, [row.media_path("image") for row in real])
    num_labels = model.config.num_labels
    parts = {"block features": slice(0, -num_labels), "expression logits": slice(-num_labels, None)}
    print("probe fitted on the drawn faces (logistic regression on standardised encoder outputs)")
    for name, columns in parts.items():
        classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        held_out = cross_val_score(classifier, drawn_x[:, columns], drawn_y, cv=4).mean()
        said = classifier.fit(drawn_x[:, columns], drawn_y).predict(real_x[:, columns])
        right = sum(word in {base_word(label) for label in row.labels} for row, word in zip(real, said, strict=True))
        answers = ", ".join(f"{row.labels[0]} -> {word}" for row, word in zip(real, said, strict=True))
        print(f"  {name}: drawn held out {held_out:.2f}; real photos {right} of {len(real)} ({answers})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=models_dir() / "fer-mini-xception")
    parser.add_argument("--real", type=Path, default=Path("outputs/pyfeat/manifest.jsonl"))
    parser.add_argument("--drawn", type=Path, default=Path("outputs/synth/manifest.jsonl"))
    parser.add_argument("--drawn-clips", type=int, default=300, help="synthetic training faces to read")
    parser.add_argument("--probe", action="store_true", help="also fit a probe on the drawn faces (above)")
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
    if args.probe:
        probe(model, cropper, drawn, real)
    return 0


if __name__ == "__main__":
    sys.exit(main())
