"""The streaming order and the loader (training/order.py, training/data.py, training/shards.py).

The order is checked against its specification in docs/shard-format.md, built here the obvious way
with whole arrays; the loader against what it must read: every row group about once per epoch, each
rank only its own lanes, nothing pinned for a step not yet built ever evicted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from token_shards import TEXT, build_token_run

from training.data import BatchStream, EpochSchedule, Shuffle, WindowSource, rank_slots
from training.manifest import load_manifest
from training.order import OrderError, _chunk_layout

SEQ = 64


@pytest.fixture(scope="module")
def small_row_groups(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 250 row groups of two short documents each (a few windows per row group)."""
    if not TEXT.is_file():
        pytest.skip(f"{TEXT} is not available")
    text = TEXT.read_text(encoding="utf-8")[:300_000]
    return build_token_run(tmp_path_factory.mktemp("loader"), text, lines_per_doc=20, row_group_rows=2)


def reference_epoch(n: int, shuffle: Shuffle, batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The global batches of an epoch, per docs/shard-format.md, materialised whole."""
    c, lanes = shuffle.chunk_windows, shuffle.lanes
    chunks = np.random.default_rng([seed, epoch, 0]).permutation(-(-n // c))
    sequence = np.concatenate([np.arange(k * c, min((k + 1) * c, n)) for k in chunks])
    per_lane, steps = batch // lanes, n // batch
    lane_len, group = steps * per_lane, shuffle.group_windows
    shuffled = []
    for p in range(lanes):
        lane = sequence[p * lane_len : (p + 1) * lane_len]
        pieces = [lane[g : g + group] for g in range(0, lane_len, group)]
        for i, piece in enumerate(pieces):
            pieces[i] = piece[np.random.default_rng([seed, epoch, 1, p, i]).permutation(len(piece))]
        shuffled.append(np.concatenate(pieces))
    return [np.concatenate([s[t * per_lane : (t + 1) * per_lane] for s in shuffled]) for t in range(steps)]


@pytest.mark.parametrize(
    ("n", "shuffle", "batch"),
    [(1000, Shuffle(4, 30, 3), 8), (997, Shuffle(2, 64, 1), 6), (500, Shuffle(1, 7, 5), 5)],
)
def test_order_follows_its_specification(n: int, shuffle: Shuffle, batch: int) -> None:
    schedule = EpochSchedule(n, batch, 5, shuffle)
    for epoch in (0, 1):
        expected = reference_epoch(n, shuffle, batch, 5, epoch)
        first = epoch * schedule.steps_per_epoch
        got = [schedule.global_batch_at(first + s)[:, 1] for s in range(len(expected))]
        np.testing.assert_array_equal(np.stack(got), np.stack(expected))
        flat = np.concatenate(got)
        assert len(np.unique(flat)) == len(flat) > n - batch  # every window at most once, < B left out


def test_order_needs_one_entry_per_chunk_not_per_window() -> None:
    """Ten trillion tokens of windows: the order holds the chunk layout and the groups in use."""
    n_windows, shuffle = 10_000_000_000, Shuffle(8, 8192, 4)
    schedule = EpochSchedule(n_windows, 512, 0, shuffle)
    batch = schedule.global_batch_at(schedule.steps_per_epoch - 1)
    assert batch.shape == (512, 2) and len(np.unique(batch[:, 1])) == 512
    chunks, starts = _chunk_layout(n_windows, 8192, (0, 0))
    assert len(chunks) == len(starts) == -(-n_windows // 8192)  # 1.2 M entries, not 10 G


def test_order_settings_are_checked() -> None:
    assert Shuffle.for_tokens(None, 8 << 20, 4, 1023, 512) == Shuffle(8, 8192, 4)
    assert Shuffle.for_tokens(None, 100, 4, 1023, 12).lanes == 4  # gcd(12, 8); chunks at least 1 window
    with pytest.raises(OrderError, match="does not divide"):
        Shuffle.for_tokens(3, 8 << 20, 4, 1023, 16)
    with pytest.raises(OrderError, match="fewer than one batch"):
        EpochSchedule(10, 16, 0, Shuffle(8, 4, 2))


def test_each_rank_reads_only_its_lanes() -> None:
    schedule = EpochSchedule(2000, 16, 1, Shuffle(lanes=4, chunk_windows=20, buffer_chunks=2))

    def chunks(rank: int, world: int) -> set[int]:
        steps = range(schedule.steps_per_epoch)
        return {int(w) // 20 for s in steps for w in rank_slots(schedule, s, rank, world)[:, 1]}

    four = [chunks(r, 4) for r in range(4)]
    for a in range(4):
        for b in range(a + 1, 4):  # only neighbouring lanes share a chunk, where they meet
            assert len(four[a] & four[b]) <= (1 if b == a + 1 else 0)
    assert sum(len(c) for c in four) <= 100 + 3
    assert chunks(0, 2) == four[0] | four[1]  # with two ranks, each reads two whole lanes


def test_an_epoch_reads_each_row_group_about_once(small_row_groups: Path) -> None:
    manifest = load_manifest(str(small_row_groups))
    probe = WindowSource(manifest, "train", SEQ)
    n_rg, n_windows = len(probe.index), len(probe)
    chunk = 5 * n_windows // n_rg  # about five row groups per chunk
    shuffle = Shuffle(lanes=2, chunk_windows=chunk, buffer_chunks=2)
    schedule = EpochSchedule(n_windows, 8, 0, shuffle)
    buffers = shuffle.lanes * shuffle.group_windows * (SEQ + 1) * 2
    assert buffers < probe.index.n_tokens * 2 // 8  # the cache below holds the buffers, not the split

    source = WindowSource(manifest, "train", SEQ, cache_bytes=2 * buffers, threads=2)
    for _ in BatchStream([source], schedule, 0, 1, 0, schedule.steps_per_epoch, prefetch_steps=4):
        pass
    amplification = source.cache.stats.tokens / source.index.n_tokens
    n_chunks = -(-n_windows // chunk)
    assert source.cache.stats.row_groups >= n_rg - 2  # all but the dropped tail
    assert amplification <= 1 + (n_chunks + 2 * shuffle.lanes) / n_rg < 1.3

    # The same cache under one uniform permutation of all windows, the reference order.
    uniform = WindowSource(manifest, "train", SEQ, cache_bytes=2 * buffers, threads=1)
    for w in np.random.default_rng(0).permutation(n_windows)[: schedule.steps_per_epoch * 8]:
        uniform.window(int(w))
    assert uniform.cache.stats.tokens / uniform.index.n_tokens > 2 * amplification
    probe.close(), source.close(), uniform.close()


def test_read_ahead_never_evicts_what_a_planned_step_needs(small_row_groups: Path) -> None:
    """With a 1-byte cache nothing is kept for its own sake: a row group is fetched once per run of
    consecutive steps that need it (the next step's row groups are pinned before the current step's
    are let go), and with room for everything exactly once."""
    source = WindowSource(load_manifest(str(small_row_groups)), "train", SEQ, cache_bytes=1, threads=3)
    schedule = EpochSchedule(len(source), 8, 0, Shuffle(lanes=2, chunk_windows=15, buffer_chunks=2))
    steps = range(3, 60)
    needs = [set(source.row_groups(rank_slots(schedule, s, 1, 2)[:, 1]).tolist()) for s in steps]
    runs = sum(len(now - before) for before, now in zip([set(), *needs], needs, strict=False))
    batches = list(BatchStream([source], schedule, 1, 2, steps.start, steps.stop, prefetch_steps=3))
    assert [b.step for b in batches] == list(steps)
    assert source.cache.stats.row_groups == runs
    assert source.cache.pinned_bytes == 0 and source.cache.resident_bytes == 0

    roomy = WindowSource(load_manifest(str(small_row_groups)), "train", SEQ, cache_bytes=1 << 30, threads=3)
    again = list(BatchStream([roomy], schedule, 1, 2, steps.start, steps.stop))
    assert roomy.cache.stats.row_groups == len(set().union(*needs))
    assert [b.windows for b in again] == [b.windows for b in batches]
    source.close(), roomy.close()


def test_a_closed_stream_leaves_nothing_pinned(small_row_groups: Path) -> None:
    source = WindowSource(load_manifest(str(small_row_groups)), "train", SEQ)
    schedule = EpochSchedule(len(source), 8, 0, Shuffle(lanes=2, chunk_windows=15, buffer_chunks=2))
    batches = iter(BatchStream([source], schedule, 0, 1, 0, 100))
    next(batches), next(batches)
    assert source.cache.pinned_bytes > 0
    batches.close()  # type: ignore[attr-defined]
    assert source.cache.pinned_bytes == 0
    source.close()
