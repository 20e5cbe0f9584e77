"""Media kinds come from the bytes; request errors name the field the way the client wrote it."""

from __future__ import annotations

import pytest

from affect_llm.serving.errors import ApiError
from affect_llm.serving.schema import parse_request
from affect_llm.serving.sniff import Sniffed, describe, sniff


@pytest.mark.parametrize(("head", "expected"), [
    (b"RIFF\x00\x00\x00\x00WAVEfmt ", Sniffed("audio", "wav")),
    (b"fLaC\x00\x00\x00\x22", Sniffed("audio", "flac")),
    (b"ID3\x04\x00", Sniffed("audio", "mp3")),
    (b"\xff\xfb\x90\x64", Sniffed("audio", "mp3")),
    (b"OggS\x00\x02", Sniffed("audio", "ogg")),
    (b"\x00\x00\x00\x20ftypM4A \x00", Sniffed("audio", "m4a")),
    (b"\x89PNG\r\n\x1a\n\x00", Sniffed("image", "png")),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", Sniffed("image", "jpeg")),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", Sniffed("image", "webp")),
    (b"\x00\x00\x00\x18ftypisom\x00", Sniffed("video", "mp4")),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86", Sniffed("video", "matroska")),
    (b"RIFF\x00\x00\x00\x00AVI LIST", Sniffed("video", "avi")),
])
def test_known_signatures(head: bytes, expected: Sniffed) -> None:
    assert sniff(head) == expected


@pytest.mark.parametrize("head", [b"", b"hello world", b"{\"a\": 1}", b"\xff\xe0", b"PK\x03\x04", b"\x80\x04\x95"])
def test_anything_else_is_unknown(head: bytes) -> None:
    assert sniff(head) is None  # a pickle (\x80\x04) or a zip is never handed to a decoder


def test_descriptions_read_as_english() -> None:
    assert describe(Sniffed("image", "png")) == "a png image"
    assert describe(Sniffed("video", "avi")) == "an avi video"
    assert describe(Sniffed("audio", "wav")) == "wav audio"
    assert describe(None) == "not a known audio, image or video format"


@pytest.mark.parametrize(("body", "message"), [
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content[0].image_url.url: Field required"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content: Input should be"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n: Input should be 1 (got 2)"),
    ({"model": "m", "messages": []}, "messages: List should have at least 1 item"),
    ([1, 2], "the body must be a JSON object, got list"),
])
def test_validation_errors_name_the_field(body: object, message: str) -> None:
    with pytest.raises(ApiError) as raised:
        parse_request(body)
    assert raised.value.status == 400 and raised.value.message.startswith(message)
