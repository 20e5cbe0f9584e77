"""What the one validation path costs: streaming a large manifest with a bad line, and judging clips.

Prints (a) rows/s for :class:`affect_llm.data.manifest.ManifestReader` over a generated manifest of
``--rows`` lines, one of them bad (it must cost that line only), and (b) the median seconds per clip
for ``load_media`` (decode + checks, 8 frames and the audio track, no faces) and for
``validate_media`` (the data check's judgement, 4 frames, faces included) on 10 s 1280x720 clips.

    python benchmarks/bench_validation.py --rows 100000 --clips 4 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench_decode import make_clips


def bench_manifest(folder: Path, rows: int) -> None:
    from affect_llm.data.manifest import ManifestReader

    path = folder / "big.jsonl"
    bad = rows // 2
    with path.open("w", encoding="utf-8") as handle:
        for index in range(rows):
            row = {"id": f"clip{index:06d}", "video": f"clips/{index}.mp4", "labels": ["happy"], "split": "train"}
            handle.write("{cut short\n" if index == bad else json.dumps(row) + "\n")
    start = time.perf_counter()
    reader = ManifestReader(path)
    count = sum(1 for _ in reader)
    seconds = time.perf_counter() - start
    print(f"manifest: {rows} lines, {count} rows read, {len(reader.issues)} refused "
          f"(line {reader.issues[0].line}) in {seconds:.2f} s = {rows / seconds:,.0f} lines/s")


def _median_seconds(fn, clips: list[Path], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for clip in clips:
            fn(clip)
        times.append((time.perf_counter() - start) / len(clips))
    return statistics.median(times)


def bench_clips(folder: Path, count: int, seconds: float, repeats: int) -> None:
    from affect_llm.data.manifest import ManifestRow
    from affect_llm.data.media import load_media
    from affect_llm.data.validation import validate_media

    clips = make_clips(folder, count, seconds)

    def load(clip: Path) -> None:
        load_media(ManifestRow(id=clip.stem, video=str(clip)), num_frames=8, detect_faces=False)

    def validate(clip: Path) -> None:
        validate_media({"video": clip})

    load(clips[0])  # warm-up: imports and codec initialisation
    validate(clips[0])
    for name, fn in (("load_media (8 frames + audio)", load), ("validate_media (data check)", validate)):
        print(f"{name:32s} median {_median_seconds(fn, clips, repeats):.3f} s/clip")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_manifest(Path(tmp), args.rows)
        bench_clips(Path(tmp), args.clips, args.seconds, args.repeats)


if __name__ == "__main__":
    main()
