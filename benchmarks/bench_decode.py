"""Decoding throughput: sampled frames + audio (``load_media``) vs reading every frame.

Generates 10 s 1280x720 clips with ffmpeg in a temporary folder, then reports the median
clips/s over repeats for (a) ``load_media`` with 8 uniformly sampled frames and the audio
track, without face detection, and (b) a decord loop that decodes every frame.

    python benchmarks/bench_decode.py --clips 4 --repeats 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def make_clips(folder: Path, count: int, seconds: float) -> list[Path]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise SystemExit("bench_decode: ffmpeg is not on PATH")
    clips = []
    for index in range(count):
        path = folder / f"clip{index}.mp4"
        subprocess.run(
            [
                ffmpeg,
                "-nostdin",
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=1280x720:rate=25",
                "-f",
                "lavfi",
                "-i",
                f"sine=frequency={300 + 50 * index}:sample_rate=44100",
                "-t",
                str(seconds),
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
                "-c:a",
                "aac",
                "-shortest",
                str(path),
            ],
            check=True,
        )
        clips.append(path)
    return clips


def sampled(clips: list[Path]) -> None:
    from affect_llm.data.manifest import ManifestRow
    from affect_llm.data.media import load_media

    for path in clips:
        load_media(ManifestRow(id=path.stem, video=str(path)), num_frames=8, detect_faces=False)


def every_frame(clips: list[Path]) -> None:
    from decord import VideoReader, cpu

    for path in clips:
        reader = VideoReader(str(path), ctx=cpu(0))
        for index in range(len(reader)):
            reader[index].asnumpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clips = make_clips(Path(tmp), args.clips, args.seconds)
        sampled(clips[:1])  # warm-up: imports and codec initialisation
        for name, fn in (("sampled 8 frames + audio", sampled), ("every frame (loop)", every_frame)):
            rates = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                fn(clips)
                rates.append(len(clips) / (time.perf_counter() - start))
            print(
                f"{name:28s} median {statistics.median(rates):7.2f} clips/s  (runs: {', '.join(f'{r:.2f}' for r in rates)})"
            )


if __name__ == "__main__":
    main()
