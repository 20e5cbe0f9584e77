"""Every bad request gets a 4xx naming its problem, and the server serves the next request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from servinghelpers import ANSWER_TEXT, audio_part, b64, image_part, text_part

MODEL = "affect-tiny"


def post(server, body: Any, content_type: str = "application/json") -> httpx.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.api}/chat/completions", content=data, headers={"Content-Type": content_type},
                      timeout=60)


def chat(*content: dict, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 120, "messages": [{"role": "user", "content": list(content)}], **extra}


def assert_still_serving(server, clip_dir: Path) -> None:
    answer = post(server, chat(audio_part(clip_dir / "clip.wav"), text_part("How does the person feel?")))
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == ANSWER_TEXT


def refusal(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_an_oversized_body_is_413(server, clip_dir: Path) -> None:
    body = json.dumps(chat(text_part("x" * (5 * 1024 * 1024)))).encode()
    error = refusal(post(server, body), 413)
    assert "over the limit of 4.0 MB" in error["message"] and error["code"] == "request_too_large"
    assert_still_serving(server, clip_dir)


def test_an_oversized_medium_is_413_naming_the_part(server, clip_dir: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.wav"
    big.write_bytes((clip_dir / "clip.wav").read_bytes() + bytes(2_500_000))
    error = refusal(post(server, chat(text_part("hi"), audio_part(big))), 413)
    assert error["param"] == "messages[0].content[1].input_audio" and "per medium" in error["message"]
    assert_still_serving(server, clip_dir)


def test_another_content_type_is_415(server, clip_dir: Path) -> None:
    error = refusal(post(server, json.dumps(chat(text_part("hi"))).encode(), "text/plain"), 415)
    assert "application/json" in error["message"] and "text/plain" in error["message"]
    assert_still_serving(server, clip_dir)


def test_malformed_json_is_400_with_its_position(server, clip_dir: Path) -> None:
    error = refusal(post(server, b'{"model": "affect-tiny", "messages": [}'), 400)
    assert error["message"].startswith("malformed JSON body") and "column" in error["message"]
    assert_still_serving(server, clip_dir)


def test_corrupt_media_is_400_naming_the_part(server, clip_dir: Path) -> None:
    error = refusal(post(server, chat(image_part(clip_dir / "clip.png"), audio_part(clip_dir / "corrupt.wav"))), 400)
    assert error["param"] == "messages[0].content[1].input_audio"
    assert "cannot decode" in error["message"] and "corrupt" not in error["message"]  # no server paths leak
    assert_still_serving(server, clip_dir)


def test_empty_media_is_400_saying_it_is_empty(server, clip_dir: Path) -> None:
    empty = {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}
    error = refusal(post(server, chat(text_part("hi"), empty)), 400)
    assert error["param"] == "messages[0].content[1].input_audio"
    assert "the data is empty (0 bytes), not audio" in error["message"], error["message"]
    assert_still_serving(server, clip_dir)


def test_media_are_sniffed_by_content_not_by_the_claimed_type(server, clip_dir: Path) -> None:
    png_as_wav = {"type": "input_audio", "input_audio": {"data": b64(clip_dir / "clip.png"), "format": "wav"}}
    error = refusal(post(server, chat(png_as_wav)), 400)
    assert "the data is a png image, not audio" in error["message"]
    wav_as_image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(clip_dir / 'clip.wav')}"}}
    assert "wav audio, not an image" in refusal(post(server, chat(wav_as_image)), 400)["message"]
    assert_still_serving(server, clip_dir)


def test_a_path_outside_the_allowed_folder_is_403(server, clip_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.wav"
    outside.write_bytes((clip_dir / "clip.wav").read_bytes())
    sneaky = clip_dir / "link.wav"
    sneaky.symlink_to(outside)
    for path in (outside, sneaky, Path(f"{clip_dir}/../{tmp_path.name}/outside.wav")):
        part = {"type": "audio_url", "audio_url": {"url": f"file://{path}"}}
        error = refusal(post(server, chat(part)), 403)
        assert "outside the allowed media folder" in error["message"] and error["code"] == "path_not_allowed"
    sneaky.unlink()
    assert_still_serving(server, clip_dir)


def test_remote_urls_are_not_fetched(server, clip_dir: Path) -> None:
    part = {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/face.png"}}
    assert "remote URLs are not fetched" in refusal(post(server, chat(part)), 400)["message"]


def test_an_unknown_model_is_404_through_the_official_client(server, clip_dir: Path) -> None:
    client = OpenAI(base_url=server.api, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="'gpt-4o' does not exist; this server serves 'affect-tiny'"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert_still_serving(server, clip_dir)


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"messages": [{"role": "user", "content": "hi"}]}, "model", "Field required"),
    (chat(text_part("hi"), stop=["\n"]), "stop", "does not support this field"),
    (chat({"type": "input_video", "data": "x"}), "messages[0].content[0]", "does not match any of the expected tags"),
    (chat(text_part("hi"), max_tokens=100_000), "max_tokens", "over this server's limit of 4096"),
    (chat(text_part("hi"), task="summarise"), "task", "unknown task 'summarise'"),
    (chat(text_part("hi"), cache_salt=""), "cache_salt", "at least 1 character"),
    ({"model": MODEL, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]},
     "messages[0].role", "'system' messages are not supported"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}}]}]},
     "messages[0].content[0].input_audio", "not valid base64"),
])
def test_invalid_fields_are_400_naming_the_field(server, body: dict, param: str, words: str) -> None:
    error = refusal(post(server, body), 400)
    assert error["param"] == param and words in error["message"] and error["message"].startswith(param)


def test_two_different_clips_in_one_conversation_are_refused(server, clip_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.wav"
    other.write_bytes((clip_dir / "clip.wav").read_bytes()[:-2000])
    body = {"model": MODEL, "messages": [
        {"role": "user", "content": [audio_part(clip_dir / "clip.wav")]},
        {"role": "assistant", "content": "happy"},
        {"role": "user", "content": [audio_part(other), text_part("and this one?")]}]}
    error = refusal(post(server, body), 400)
    assert error["param"] == "messages[2].content[0].input_audio" and "one clip" in error["message"]


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (its pixel data stops after a row)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_media_that_would_decode_too_large_are_413_before_decoding(server, clip_dir: Path, tmp_path: Path) -> None:
    """Small on the wire, huge decoded: an 11-minute FLAC of silence (a few KB), a 10000 x 10000 image header."""
    import numpy as np
    import soundfile as sf

    long_audio = tmp_path / "long.flac"
    sf.write(long_audio, np.zeros(16_000 * 660, dtype=np.float32), 16_000, format="FLAC")
    assert long_audio.stat().st_size < 2 * 1024 * 1024
    error = refusal(post(server, chat(text_part("hi"), audio_part(long_audio))), 413)
    assert error["code"] == "media_too_large" and "lasts 660 s, over the limit of 600 s" in error["message"]
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header(10_000, 10_000))
    error = refusal(post(server, chat(text_part("hi"), image_part(huge))), 413)
    assert "10000 x 10000 pixels, over the limit of 40 million" in error["message"]
    assert_still_serving(server, clip_dir)


def test_a_prompt_past_the_context_is_400_context_length_exceeded(server, clip_dir: Path) -> None:
    error = refusal(post(server, chat(text_part("word " * 8200))), 400)
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert "this model's context is 8192 tokens" in error["message"]
    assert_still_serving(server, clip_dir)


def test_spec_fields_the_server_reads_its_own_way(server, clip_dir: Path) -> None:
    """null means the default; a seed past 64 bits and a client's JSON schema are refused by name."""
    body = chat(audio_part(clip_dir / "clip.wav"), text_part("How does the person feel?"), stop=None, n=None,
                stream=None)
    answer = post(server, body)
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == ANSWER_TEXT
    error = refusal(post(server, chat(text_part("hi"), temperature=0.7, seed=2**64)), 400)
    assert error["param"] == "seed"
    error = refusal(post(server, chat(text_part("hi"), response_format={"type": "json_schema", "json_schema": {}})), 400)
    assert error["param"] == "response_format.type"


def test_one_model_is_retrieved_through_the_official_client(server) -> None:
    client = OpenAI(base_url=server.api, api_key="unused", max_retries=0)
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError, match="'gpt-4o' does not exist"):
        client.models.retrieve("gpt-4o")


def test_sampling_without_a_seed_draws_one_per_request() -> None:
    from affect_llm.serving.completions import decoding_settings
    from affect_llm.serving.options import ServeOptions
    from affect_llm.serving.schema import parse_request

    options = ServeOptions(checkpoint="m")
    unseeded = parse_request({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 1.0})
    assert len({decoding_settings(unseeded, options).seed for _ in range(4)}) == 4
    seeded = parse_request({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 1.0,
                            "seed": 5})
    assert {decoding_settings(seeded, options).seed for _ in range(4)} == {5}


def test_a_backend_that_cannot_keep_salts_apart_refuses_a_cache_salt_and_no_prefix_caching() -> None:
    """vLLM's engine is handed neither the salt nor the switch: asking for them is refused, not ignored."""
    from affect_llm.serving.completions import decoding_settings
    from affect_llm.serving.errors import ApiError
    from affect_llm.serving.options import ServeOptions
    from affect_llm.serving.schema import parse_request

    salted = parse_request({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "cache_salt": "t1"})
    assert salted.cache_salt == "t1"
    decoding_settings(salted, ServeOptions(checkpoint="m", backend="hf"))
    with pytest.raises(ApiError, match="not supported with the vllm backend") as refused:
        decoding_settings(salted, ServeOptions(checkpoint="m", backend="vllm"))
    assert refused.value.param == "cache_salt" and refused.value.status == 400
    # Nor is the server told to stop caching prefixes it does not keep.
    with pytest.raises(ValueError, match=r"\(--no-prefix-caching\) is for the hf backend"):
        ServeOptions(checkpoint="m", backend="vllm", prefix_caching=False)
