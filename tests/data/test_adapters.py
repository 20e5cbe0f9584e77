"""Each adapter on a tiny corpus laid out like the published one (tiny wavs, empty-ish clips)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datahelpers import make_wav

from affect_llm.data.adapters import adapter_names, build_dataset, prepare
from affect_llm.data.adapters.generic import parse_mapping
from affect_llm.data.adapters.mercaption import parse_openset
from affect_llm.data.issues import RefusedInputError
from affect_llm.data.manifest import load_manifest


def _touch(path: Path, data: bytes = b"\0" * 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _csv(path: Path, header: str, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


def test_registry_lists_every_dataset() -> None:
    expected = {"mer2023", "mer2024", "mercaption", "meld", "iemocap", "cremad", "ravdess", "generic", "polish"}
    assert set(adapter_names()) == expected
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("affectnet", ".")


def test_meld_reports_missing_clip_in_summary(tmp_path: Path) -> None:
    root = tmp_path / "MELD"
    header = (
        "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"
    )
    _csv(
        root / "train_sent_emo.csv",
        header,
        '1,"Oh, my God!",Monica,Surprise,positive,0,0,8,21,0,1',
        "2,Hi.,Joey,Neutral,neutral,0,1,8,21,1,2",
    )
    _csv(root / "dev_sent_emo.csv", header, "1,No.,Ross,Anger,negative,3,2,1,1,0,1")
    _touch(root / "MELD.Raw" / "train" / "train_splits" / "dia0_utt0.mp4")
    _touch(root / "MELD.Raw" / "dev" / "dev_splits_complete" / "dia3_utt2.mp4")
    out = tmp_path / "out" / "meld.jsonl"
    summary = prepare("meld", root, out)
    rows = load_manifest(out)
    assert [r.id for r in rows] == ["meld/train/dia0_utt0", "meld/val/dia3_utt2"]
    assert rows[0].transcript == "Oh, my God!" and rows[0].labels == ["surprise"]
    assert (
        rows[0].media_path("video").resolve()
        == (root / "MELD.Raw/train/train_splits/dia0_utt0.mp4").resolve()
    )
    assert summary.missing[0]["id"] == "meld/train/dia0_utt1" and summary.dropped_for_missing_media == 1
    saved = json.loads(out.with_name("meld.jsonl.summary.json").read_text())
    assert saved["missing"][0]["path"].endswith("dia0_utt1.mp4")
    kept = prepare("meld", root, tmp_path / "keep.jsonl", keep_missing=True)
    assert kept.num_rows == 3


def test_meld_test_clip_under_the_final_videos_prefix_is_found_when_the_plain_name_is_absent(tmp_path: Path) -> None:
    header = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"
    _csv(tmp_path / "test_sent_emo.csv", header, "1,Hey.,Rachel,Joy,positive,1,0,1,1,0,1",
         "2,Oh.,Ross,Sadness,negative,1,1,1,1,1,2")
    folder = tmp_path / "MELD.Raw" / "output_repeated_splits_test"
    prefixed = _touch(folder / "final_videos_testdia1_utt0.mp4")
    plain = _touch(folder / "dia1_utt1.mp4")
    _touch(folder / "final_videos_testdia1_utt1.mp4")  # beside a plain name: the plain one is read
    result = build_dataset("meld", tmp_path)
    assert [(r.id, r.media_path("video")) for r in result.rows] == [
        ("meld/test/dia1_utt0", prefixed), ("meld/test/dia1_utt1", plain)]
    assert result.missing == []


def test_ravdess_parses_file_name_fields_and_pairs_modalities(tmp_path: Path) -> None:
    actor = tmp_path / "Actor_12"
    actor.mkdir()
    make_wav(actor / "03-01-06-01-02-01-12.wav", seconds=0.3)
    _touch(actor / "01-01-06-01-02-01-12.mp4")
    make_wav(actor / "03-02-03-02-01-02-23.wav", seconds=0.3)
    _touch(actor / "readme.wav")
    result = build_dataset("ravdess", tmp_path)
    by_id = {r.id: r for r in result.rows}
    fear = by_id["ravdess/01-06-01-02-01-12"]
    assert fear.labels == ["fearful"] and fear.transcript == "Dogs are sitting by the door."
    assert fear.video.endswith("01-01-06-01-02-01-12.mp4") and fear.audio.endswith("03-01-06-01-02-01-12.wav")
    assert fear.extra["gender"] == "female" and fear.split == "train"
    song = by_id["ravdess/02-03-02-01-02-23"]
    assert song.video is None and song.split == "test" and song.extra["vocal_channel"] == "song"
    assert song.extra["intensity"] == "strong"
    assert result.skipped[0]["where"].endswith("readme.wav")


def test_cremad_file_names(tmp_path: Path) -> None:
    make_wav(_touch(tmp_path / "AudioWAV" / "x").parent / "1001_DFA_ANG_XX.wav", seconds=0.3)
    _touch(tmp_path / "VideoFlash" / "1001_DFA_ANG_XX.flv")
    make_wav(tmp_path / "AudioWAV" / "1090_IEO_HAP_HI.wav", seconds=0.3)
    rows = {r.id: r for r in build_dataset("cremad", tmp_path).rows}
    angry = rows["cremad/1001_DFA_ANG_XX"]
    assert angry.labels == ["angry"] and angry.transcript == "Don't forget a jacket."
    assert angry.video.endswith(".flv") and angry.split == "train"
    assert rows["cremad/1090_IEO_HAP_HI"].split == "test"
    assert rows["cremad/1090_IEO_HAP_HI"].extra["intensity"] == "high"


def test_iemocap_reads_evaluation_transcripts_and_rescales_va(tmp_path: Path) -> None:
    ses = tmp_path / "Session1"
    evaluation = ses / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    evaluation.parent.mkdir(parents=True)
    evaluation.write_text(
        "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
        "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]\n"
        "C-E2:\tNeutral;\t()\n\n"
        "[10.0 - 11.5]\tSes01F_impro01_M001\txxx\t[5.0000, 1.0000, 3.0000]\n"
    )
    transcript = ses / "dialog" / "transcriptions" / "Ses01F_impro01.txt"
    transcript.parent.mkdir(parents=True)
    transcript.write_text(
        "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.\nSes01F_impro01_M001 [010.0-011.5]: Do you have your forms?\n"
    )
    make_wav(_touch(ses / "sentences/wav/Ses01F_impro01/x").parent / "Ses01F_impro01_F000.wav", seconds=0.3)
    result = build_dataset("iemocap", tmp_path)
    first, second = result.rows
    assert first.labels == ["neutral"] and first.transcript == "Excuse me." and first.valence == -0.25
    assert second.labels == [] and second.extra["raw_label"] == "xxx"
    assert second.valence == 1.0 and second.arousal == -1.0 and first.split == "train"
    assert [m.id for m in result.missing] == ["iemocap/Ses01F_impro01_M001"]


@pytest.mark.parametrize("dataset", ["mer2023", "mer2024"])
def test_mer_label_csv_and_video_folder(tmp_path: Path, dataset: str) -> None:
    label_file = "train-label.csv" if dataset == "mer2023" else "label-disdim.csv"
    _csv(
        tmp_path / label_file,
        "name,discrete,valence",
        "sample_00000001,happy,2.5",
        "sample_00000002,worried,-1",
    )
    _csv(tmp_path / "test1-label.csv", "name,discrete,valence", "sample_00000003,neutral,0")
    _csv(tmp_path / "subtitle_chieng.csv", "name,chinese,english", "sample_00000001,你好,Hello there")
    for name in ("sample_00000001", "sample_00000003"):
        _touch(tmp_path / "video" / f"{name}.mp4")
    result = build_dataset(dataset, tmp_path)
    rows = {r.id: r for r in result.rows}
    first = rows[f"{dataset}/sample_00000001"]
    assert first.labels == ["happy"] and first.valence == 0.5 and first.transcript == "Hello there"
    assert rows[f"{dataset}/sample_00000003"].split == "test1"
    assert [m.id for m in result.missing] == [f"{dataset}/sample_00000002"]


def test_mercaption_joins_labels_descriptions_and_subtitles(tmp_path: Path) -> None:
    _csv(
        tmp_path / "track2_train_mercaptionplus.csv",
        "name,openset",
        "s1,\"['happy', 'Relieved']\"",
        "s2,\"['sad']\"",
    )
    _csv(tmp_path / "track3_train_mercaptionplus.csv", "name,reason", 's1,"She smiles, and her voice rises."')
    _csv(tmp_path / "track2_train_ovmerd.csv", "name,openset", "s3,\"['angry']\"")
    _csv(tmp_path / "subtitle_chieng.csv", "name,chinese,english", "s1,好,Good")
    for name in ("s1", "s2", "s3"):
        _touch(tmp_path / "video" / f"{name}.mp4")
    make_wav(_touch(tmp_path / "audio" / "x").parent / "s1.wav", seconds=0.3)
    rows = {r.id: r for r in build_dataset("mercaption", tmp_path).rows}
    s1 = rows["mercaptionplus/s1"]
    assert s1.labels == ["happy", "relieved"] and s1.explanation == "She smiles, and her voice rises."
    assert s1.transcript == "Good" and s1.audio.endswith("s1.wav") and s1.source == "mer-caption+"
    assert rows["mercaptionplus/s2"].explanation is None and rows["ovmerd/s3"].source == "ov-merd"
    assert parse_openset("happy, calm") == ["happy", "calm"]


def test_generic_mapping_from_csv(tmp_path: Path) -> None:
    _csv(
        tmp_path / "ann.csv",
        "clip,file,emo,text,fold,spk",
        "c1,a/c1.wav,happy;excited,hi,val,7",
        "c2,a/c2.wav,sad,,train,8",
    )
    make_wav(_touch(tmp_path / "a" / "x").parent / "c1.wav", seconds=0.3)
    mapping = parse_mapping("id=clip,audio=file,labels=emo,transcript=text,split=fold")
    out = tmp_path / "m.jsonl"
    summary = prepare("generic", tmp_path, out, annotations="ann.csv", mapping=mapping, labels_sep=";")
    (row,) = load_manifest(out)
    assert row.labels == ["happy", "excited"] and row.split == "val" and row.extra == {"annotation": "ann.csv:2", "spk": "7"}
    assert row.media_path("audio").resolve() == (tmp_path / "a" / "c1.wav").resolve()
    assert summary.missing == [{"id": "c2", "field": "audio", "path": str(tmp_path / "a" / "c2.wav")}]
    with pytest.raises(ValueError, match="not a manifest field"):
        parse_mapping("id=clip,speaker=spk")


def test_windows_1252_punctuation_in_published_csvs_is_put_back(tmp_path: Path) -> None:
    """MELD's published CSVs hold curly quotes and ellipses as C1 control characters."""
    root = tmp_path / "MELD"
    header = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"
    _csv(root / "train_sent_emo.csv", header, "1,I\x92m fine\x85 really\xa0now,Monica,Joy,positive,0,0,8,21,0,1")
    _touch(root / "train" / "train_splits" / "dia0_utt0.mp4")
    (row,) = build_dataset("meld", root).rows
    assert row.transcript == "I\u2019m fine\u2026 really now"


def test_a_csv_that_is_not_utf8_is_named_at_its_line(tmp_path: Path) -> None:
    lines = [f"c{i},a.wav,happy,fine" for i in range(300)] + ["c300,a.wav,happy,caf\xe9"]
    path = tmp_path / "ann.csv"
    path.write_bytes(("clip,file,emo,text\n" + "\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(ValueError, match=r"ann.csv: line 302, byte 21: not valid UTF-8"):
        build_dataset("generic", tmp_path, annotations="ann.csv", mapping=parse_mapping("id=clip,audio=file"))


def test_mer2024_subtitles_from_its_label_transcription_file(tmp_path: Path) -> None:
    _csv(tmp_path / "label-disdim.csv", "name,discrete,valence", "sample_00000001,happy,2.5")
    _csv(tmp_path / "label-transcription.csv", "name,chinese,english", "sample_00000001,你好,Hello there")
    _touch(tmp_path / "video-labeled" / "sample_00000001.mp4")
    (row,) = build_dataset("mer2024", tmp_path).rows
    assert row.transcript == "Hello there"


def test_strict_prepare_refuses_a_repeated_id(tmp_path: Path) -> None:
    _csv(tmp_path / "ann.csv", "clip,file,emo", "c1,a.wav,happy", "c1,a.wav,sad")
    make_wav(tmp_path / "a.wav", seconds=0.3)
    mapping = parse_mapping("id=clip,audio=file,labels=emo")
    out = tmp_path / "m.jsonl"
    with pytest.raises(RefusedInputError, match=r"ann.csv:3: duplicate id c1 \(the first row with it, ann.csv:2, is kept\)"):
        prepare("generic", tmp_path, out, annotations="ann.csv", mapping=mapping, strict=True)
    assert not out.exists()
    summary = prepare("generic", tmp_path, out, annotations="ann.csv", mapping=mapping)
    assert summary.num_rows == 1 and len(summary.skipped) == 1


def test_generic_csv_cells_holding_label_lists(tmp_path: Path) -> None:
    _csv(tmp_path / "ann.csv", "clip,file,emo", 'c1,a.wav,"[""happy"", ""relieved""]"', "c2,a.wav,\"['sad', 'tired']\"",
         "c3,a.wav,calm")
    make_wav(tmp_path / "a.wav", seconds=0.3)
    rows = build_dataset("generic", tmp_path, annotations="ann.csv", mapping=parse_mapping("id=clip,audio=file,labels=emo")).rows
    assert [r.labels for r in rows] == [["happy", "relieved"], ["sad", "tired"], ["calm"]]


def test_cremad_file_renamed_upstream_keeps_its_old_name(tmp_path: Path) -> None:
    make_wav(_touch(tmp_path / "AudioWAV" / "x").parent / "1040_ITH_SAD_X.wav", seconds=0.3)
    result = build_dataset("cremad", tmp_path)
    assert result.skipped == [r for r in result.skipped if not r["where"].endswith("1040_ITH_SAD_X.wav")]
    row = next(r for r in result.rows if r.id == "cremad/1040_ITH_SAD_X")
    assert row.labels == ["sad"] and row.extra["intensity"] == "unspecified"


def test_iemocap_turn_without_transcript_is_kept_without_words(tmp_path: Path, caplog) -> None:
    ses = tmp_path / "Session1"
    evaluation = ses / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    evaluation.parent.mkdir(parents=True)
    evaluation.write_text("[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]\n")
    make_wav(_touch(ses / "sentences/wav/Ses01F_impro01/x").parent / "Ses01F_impro01_F000.wav", seconds=0.3)
    with caplog.at_level("WARNING"):
        result = build_dataset("iemocap", tmp_path)
    (row,) = result.rows
    assert row.transcript is None and result.skipped == []
    assert "1 evaluated turns have no transcript line" in caplog.text and "Ses01F_impro01_F000" in caplog.text
