"""Chunks tile the recording, respect the maximum, and cut in quiet places."""

import itertools

import numpy as np

from transcribed.audio.chunking import StreamChunker, plan_chunks


def test_short_audio_is_one_chunk_and_empty_audio_none() -> None:
    assert plan_chunks(np.ones(16000, np.float32), 16000, 30) == [(0, 16000)]
    assert plan_chunks(np.zeros(0, np.float32), 16000, 30) == []


def test_chunks_tile_without_gaps_and_stay_under_the_maximum() -> None:
    audio = np.random.default_rng(0).standard_normal(16000 * 125).astype(np.float32)
    ranges = plan_chunks(audio, 16000, 30)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(audio)
    assert all(end == next_start for (_, end), (next_start, _) in itertools.pairwise(ranges))
    assert all(0 < end - start <= 30 * 16000 for start, end in ranges)


def test_cuts_land_in_the_silence() -> None:
    rate = 16000
    audio = np.random.default_rng(0).standard_normal(rate * 50).astype(np.float32)
    audio[rate * 24 : rate * 25] = 0  # the only pause inside the search range
    (_first_start, first_end), _ = plan_chunks(audio, rate, 30)
    assert rate * 24 <= first_end <= rate * 25


def test_the_stream_chunker_matches_whole_file_planning_and_holds_little() -> None:
    rate = 16000
    audio = np.random.default_rng(1).standard_normal(rate * 200).astype(np.float32)
    audio[rate * 45 : rate * 46] = 0
    chunker = StreamChunker(rate, 30)
    pieces = []
    for start in range(0, len(audio), 12345):  # odd block sizes, like a decoder's
        pieces += chunker.feed(audio[start : start + 12345])
        assert chunker.buffered_samples <= 30 * rate + 12345
    pieces += chunker.finish()
    assert np.array_equal(np.concatenate([chunk for _, chunk in pieces]), audio)
    assert [start for start, _ in pieces] == list(
        itertools.accumulate([0] + [len(chunk) for _, chunk in pieces[:-1]])
    )
    assert all(0 < len(chunk) <= 30 * rate for _, chunk in pieces)
    assert [(s, s + len(c)) for s, c in pieces] == plan_chunks(audio, rate, 30)


def test_a_long_pause_ends_a_chunk_early_even_in_a_short_recording() -> None:
    rate = 16000
    audio = np.random.default_rng(2).standard_normal(rate * 25).astype(np.float32)
    audio[rate * 12 : rate * 15] = 0  # a 3 s pause
    audio[rate * 2 : rate * 3] = 0  # a 1 s pause and one too early: neither ends a chunk
    ranges = plan_chunks(audio, rate, 30)
    assert len(ranges) == 2 and rate * 13 <= ranges[0][1] <= rate * 14
