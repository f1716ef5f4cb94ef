"""Hostile input and hostile paths: every case is counted in quarantine with its reason, or refused with
one clear line, and no run is silently wrong, unbounded in memory or time, or written outside --output.

Inputs are built inside the tests; every subprocess runs under `timeout`.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.run.files import parquet_file, read_table
from pipelines.run.layout import RunLayout

GRISTMILL = Path(sys.executable).parent / "gristmill"
OPEN_POLICY = "language:\n  allow: null\n  min_confidence: 0.0\nrules: []\n"  # keeps every document
SETTINGS = ("--set", "tokenizer.vocab_size=400", "--workers", "2")

# ---------------------------------------------------------------- bad records, files and paths (ingest)


def _text(chars: int, seed: int, vocabulary: int = 2000) -> str:
    """Sentences of seeded made-up words (five to a line), about `chars` characters; a long text repeats
    a 200,000-character block."""
    if chars > 200_000:
        block = _text(200_000, seed, vocabulary) + "\n"
        return (block * (chars // len(block) + 1))[:chars]
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(vocabulary)] + ["the", "and", "of", "to", "with"] * 40  # fmt: skip
    lines, size = [], 0
    while size < chars:
        line = " ".join(" ".join(rng.choices(words, k=12)).capitalize() + "." for _ in range(5))
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)[:chars]


def _record(text: str) -> bytes:
    return json.dumps({"text": text}).encode()


def gristmill_run(work: Path, *args: str, limit: float = 300) -> subprocess.CompletedProcess[str]:
    """`gristmill run ARGS` under `timeout` (a hang fails the test instead of stalling it)."""
    command = ["timeout", "-k", "10", str(limit), str(GRISTMILL), "run", *args]
    return subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=limit + 30)


def _quarantine(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted((run / "quarantine").glob("*.jsonl"))
            for line in path.read_text().splitlines()]  # fmt: skip


def _documents(run: Path) -> dict[str, str]:
    """Text of every document of the run by id."""
    docs: dict[str, str] = {}
    for path in sorted((run / "documents").glob("[0-9]*.parquet")):
        table = pq.read_table(path, columns=["id", "text"])
        docs.update(zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True))
    return docs


def _corrupt_parquet(path: Path) -> list[str]:
    """An uncompressed Parquet input with page checksums, 3 row groups of 100 rows, one byte of row
    group 1 changed; returns the texts as written."""
    texts = [f"Parquet document {i} keeps its text. " * 5 for i in range(300)]
    pq.write_table(pa.table({"text": texts}), path, compression="none", use_dictionary=False,
                   write_page_checksum=True, row_group_size=100)  # fmt: skip
    data = bytearray(path.read_bytes())
    at = data.index(
        b"Parquet document 150 ", pq.ParquetFile(path).metadata.row_group(1).column(0).data_page_offset
    )
    data[at + 8] ^= 0x20  # "document" -> "docuMent": only the checksum can tell
    path.write_bytes(bytes(data))
    return texts


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One `gristmill run` over a folder of hostile files next to good ones."""
    work = tmp_path_factory.mktemp("hostile")
    inputs = work / "in"
    inputs.mkdir()
    good = [_text(3000, seed) for seed in range(40)]
    (inputs / "good.jsonl").write_bytes(b"".join(_record(t) + b"\n" for t in good))
    (inputs / "mac.jsonl").write_bytes(b"".join(_record(f"old mac record {i}") + b"\r" for i in range(5)))
    bom = codecs.BOM_UTF8
    joined = bom + _record("first file") + b"\n" + _record("first file, line 2") + b"\n"
    joined += bom + _record("second file") + b"\n" + _record("second file, line 2") + b"\n"  # cat a b
    (inputs / "joined.jsonl").write_bytes(joined)
    (inputs / "cut.jsonl").write_bytes(
        _record("before") + b'\n{"text": "never closed\n' + _record("after") + b"\n"
    )
    (inputs / os.fsdecode(b"caf\xe9-latin1-name.jsonl")).write_bytes(
        _record("a file name that is not UTF-8") + b"\n"
    )
    os.mkfifo(inputs / "pipe.jsonl")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(inputs / "socket.jsonl"))
    parquet_texts = _corrupt_parquet(inputs / "pages.parquet")
    (work / "open.yaml").write_text(OPEN_POLICY)
    start = time.monotonic()
    result = gristmill_run(
        work, "--input", "in", "--output", "runs", "--run-id", "hostile", "--policy", "open.yaml", *SETTINGS
    )
    listener.close()
    return {"result": result, "seconds": time.monotonic() - start, "run": work / "runs" / "hostile",
            "good": good, "parquet": parquet_texts}  # fmt: skip


def _reasons(hostile: dict[str, Any], source: str) -> list[tuple[str, str]]:
    return [(q["reason"], q["position"]) for q in _quarantine(hostile["run"]) if q["source"] == source]


def test_hostile_folder_runs_to_the_end_with_every_case_counted(hostile: dict[str, Any]) -> None:
    result = hostile["result"]
    assert result.returncode == 0, result.stderr[-4000:]
    expected = {"not_a_regular_file": 2, "malformed_json": 1, "corrupt_file": 1}
    assert Counter(q["reason"] for q in _quarantine(hostile["run"])) == expected
    report = json.loads((hostile["run"] / "report" / "report.json").read_text())
    assert report["quarantine"] == expected
    assert len(_documents(hostile["run"])) == 40 + 5 + 4 + 2 + 1 + 200


def test_cr_only_line_ends_give_one_document_per_record(hostile: dict[str, Any]) -> None:
    docs = _documents(hostile["run"])
    assert [docs[f"in/mac.jsonl:{i + 1}"] for i in range(5)] == [f"old mac record {i}" for i in range(5)]
    assert _reasons(hostile, "in/mac.jsonl") == []


def test_byte_order_mark_on_a_later_line_is_dropped(hostile: dict[str, Any]) -> None:
    docs = _documents(hostile["run"])
    assert [docs[f"in/joined.jsonl:{i}"] for i in (1, 2, 3, 4)] == [
        "first file", "first file, line 2", "second file", "second file, line 2"
    ]  # fmt: skip
    assert _reasons(hostile, "in/joined.jsonl") == []


def test_unterminated_string_is_named_as_such(hostile: dict[str, Any]) -> None:
    [bad] = [q for q in _quarantine(hostile["run"]) if q["source"] == "in/cut.jsonl"]
    assert (bad["reason"], bad["position"]) == ("malformed_json", "line 2")
    assert "Unterminated string" in bad["detail"]
    docs = _documents(hostile["run"])
    assert (docs["in/cut.jsonl:1"], docs["in/cut.jsonl:3"]) == ("before", "after")


def test_file_name_that_is_not_utf8_is_kept_percent_encoded(hostile: dict[str, Any]) -> None:
    docs = _documents(hostile["run"])
    assert docs["in/caf%E9-latin1-name.jsonl:1"] == "a file name that is not UTF-8"
    pinned = json.loads(RunLayout(hostile["run"]).inputs.read_text())
    [entry] = [e for e in pinned if e["source"] == "in/caf%E9-latin1-name.jsonl"]
    assert os.fsencode(entry["path"]).endswith(b"/caf\xe9-latin1-name.jsonl")  # the real bytes, to reopen


def test_fifo_and_socket_are_skipped_and_counted(hostile: dict[str, Any]) -> None:
    for name, kind in (("in/pipe.jsonl", "FIFO"), ("in/socket.jsonl", "socket")):
        [bad] = [q for q in _quarantine(hostile["run"]) if q["source"] == name]
        assert (bad["reason"], bad["position"]) == ("not_a_regular_file", "file")
        assert kind in bad["detail"]
    assert hostile["seconds"] < 240  # a FIFO opened for reading would wait for a writer forever


def test_parquet_row_group_with_a_changed_byte_is_quarantined(hostile: dict[str, Any]) -> None:
    assert _reasons(hostile, "in/pages.parquet") == [("corrupt_file", "row 100")]
    docs = _documents(hostile["run"])
    kept = [docs.get(f"in/pages.parquet:{i}") for i in range(300)]
    texts = hostile["parquet"]
    assert kept == texts[:100] + [None] * 100 + texts[200:]  # the changed text is never read
    assert not any("docuMent" in text for text in docs.values())


def _flip_in_a_page(path: Path, out: Path) -> None:
    """A copy of a Parquet file with one byte changed in the data of the last page of its first column
    chunk (the chunk's last bytes: page data, never a page header)."""
    column = pq.ParquetFile(path).metadata.row_group(0).column(0)
    start = column.dictionary_page_offset if column.has_dictionary_page else column.data_page_offset
    data = bytearray(path.read_bytes())
    data[start + column.total_compressed_size - 2] ^= 0x01
    out.write_bytes(bytes(data))


def test_every_parquet_file_gristmill_writes_has_page_checksums(
    hostile: dict[str, Any], tmp_path: Path
) -> None:
    run = hostile["run"]
    files = [p for p in sorted(run.rglob("*.parquet")) if pq.ParquetFile(p).metadata.num_rows]
    folders = {p.relative_to(run).parts[0] for p in files}
    assert {"documents", "clean", "signals", "dedup", "tokens", "report"} <= folders
    for path in files:
        changed = tmp_path / path.name
        _flip_in_a_page(path, changed)
        with pytest.raises(OSError, match="CRC checksum verification failed"):
            parquet_file(changed).read()
        with pytest.raises(OSError, match="CRC checksum verification failed"):
            read_table(changed)


def test_read_table_names_a_missing_column(hostile: dict[str, Any]) -> None:
    path = next((hostile["run"] / "signals").glob("*.parquet"))
    assert read_table(path, columns=["keep", "id"]).column_names == ["keep", "id"]
    with pytest.raises(KeyError, match="no column 'no_such_signal'"):
        read_table(path, columns=["id", "no_such_signal"])


# ---------------------------------------------------------------- bounded memory and time per record

MEASURE = (
    "import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)"
)  # peak RSS (KiB) of the largest process of the run: gristmill and every worker it forked
BOMB_BYTES = 2 << 30


def _gzip_bomb(path: Path, head: bytes, fill: bytes, tail: bytes) -> None:
    """`head`, then 2 GiB of `fill`, then `tail`, gzipped in about 2 MB (one 64 MiB member repeated)."""
    member = gzip.compress(fill * (64 << 20), compresslevel=9, mtime=0)
    with path.open("wb") as f:
        f.write(gzip.compress(head, mtime=0))
        for _ in range(BOMB_BYTES // (64 << 20)):
            f.write(member)
        f.write(gzip.compress(tail, mtime=0))


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One `gristmill run` (default limits) over a 50 MB JSONL document, a 12 MiB one, a 50 MB text file,
    a 2 GB-line gzip bomb, a 2 GiB-of-newlines gzip bomb and a 9.5 MiB document just under
    ingest.max_document_bytes that goes through every stage (kept by a policy without rules); its peak
    RSS and wall time."""
    work = tmp_path_factory.mktemp("bounded")
    inputs = work / "in"
    inputs.mkdir()
    small = [_text(3000, seed) for seed in range(20)]
    huge = [_record(t) for t in small] + [_record(_text(12 << 20, 1)), _record(_text(50_000_000, 2))]
    (inputs / "huge.jsonl").write_bytes(b"\n".join(huge) + b"\n")
    (inputs / "huge.txt").write_text(_text(50_000_000, 3))
    (inputs / "near.jsonl").write_bytes(_record(_text(int(9.5 * (1 << 20)), 4, vocabulary=300)) + b"\n")
    after = [_record(_text(3000, seed)) + b"\n" for seed in (91, 92)]
    _gzip_bomb(inputs / "newlines.jsonl.gz", _record("before the newlines") + b"\n", b"\n", after[0])
    _gzip_bomb(inputs / "line.jsonl.gz", b'{"text": "', b"x", b'"}\n' + after[1])
    (work / "open.yaml").write_text(OPEN_POLICY)
    settings = ("--set", "tokenizer.vocab_size=1000", "--workers", "2")  # the near document's words whole
    args = ("--input", "in", "--output", "runs", "--run-id", "bounded", "--policy", "open.yaml", *settings)
    command = [sys.executable, "-c", MEASURE, "timeout", "-k", "10", "600", str(GRISTMILL), "run", *args]
    start = time.monotonic()
    result = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=660)
    seconds = time.monotonic() - start
    peak_kib = int(result.stderr.strip().splitlines()[-1])
    compressed = sum(p.stat().st_size for p in inputs.glob("*.gz"))
    plain = sum(p.stat().st_size for p in inputs.iterdir() if p.suffix != ".gz")
    return {"result": result, "run": work / "runs" / "bounded", "peak_mb": peak_kib / 1024,
            "seconds": seconds, "compressed_mb": compressed / 1e6, "plain_mb": plain / 1e6}  # fmt: skip


def test_huge_documents_and_gzip_bombs_are_counted(bounded: dict[str, Any]) -> None:
    result = bounded["result"]
    assert result.returncode == 0, result.stderr[-4000:]
    reasons = {(q["source"], q["position"]): q["reason"] for q in _quarantine(bounded["run"])}
    assert reasons == {
        ("in/huge.jsonl", "line 21"): "too_large",  # 12 MiB of text: over max_document_bytes
        ("in/huge.jsonl", "line 22"): "line_too_long",  # 50 MB: over max_line_bytes, never loaded
        ("in/huge.txt", "file"): "too_large",  # read no further than the limit
        ("in/line.jsonl.gz", "line 1"): "line_too_long",  # 2 GiB in one line
    }
    docs = _documents(bounded["run"])
    assert docs["in/newlines.jsonl.gz:1"] == "before the newlines"
    assert docs[f"in/newlines.jsonl.gz:{BOMB_BYTES + 2}"] == _text(3000, 91)  # 2 GiB of blank lines counted
    assert docs["in/line.jsonl.gz:2"] == _text(3000, 92)
    assert len(docs["in/near.jsonl:1"].encode()) == int(9.5 * (1 << 20))
    manifest = json.loads(RunLayout(bounded["run"]).manifest.read_text())
    assert sum(s["documents"] for split in manifest["splits"].values() for s in split["shards"]) == len(docs)


def test_peak_memory_and_time_stay_bounded(bounded: dict[str, Any]) -> None:
    peak, seconds, bombs, plain = (bounded[k] for k in ("peak_mb", "seconds", "compressed_mb", "plain_mb"))
    print(f"peak RSS {peak:.0f} MB, {seconds:.1f} s for {bombs:.1f} MB of gzip bombs, {plain:.1f} MB plain")
    assert peak < 1500
    # decompressing ~1000:1 costs about 3 s per compressed MB on one core; the rest is tens of seconds
    assert seconds < 60 + 15 * bombs + plain


# ---------------------------------------------------------------- no stale resume


@pytest.fixture
def small_run(tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.jsonl").write_bytes(b"".join(_record(_text(3000, seed)) + b"\n" for seed in range(30)))
    (tmp_path / "open.yaml").write_text(OPEN_POLICY)
    args = ("--input", "in", "--output", "runs", "--run-id", "again", "--policy", "open.yaml", *SETTINGS)
    first = gristmill_run(tmp_path, *args)
    assert first.returncode == 0, first.stderr[-4000:]
    return tmp_path, args


def test_changed_input_stops_a_resumed_run(small_run: tuple[Path, tuple[str, ...]]) -> None:
    work, args = small_run
    path = work / "in" / "a.jsonl"
    before = path.stat()
    data = path.read_bytes()
    path.write_bytes(data.replace(b"The", b"Thx", 1))  # same size; and the same mtime:
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    resumed = gristmill_run(work, *args)
    assert resumed.returncode != 0
    lines = [line for line in resumed.stderr.splitlines() if "in/a.jsonl changed (content differs)" in line]
    assert len(lines) == 1 and "--force-restart" in lines[0] and "--run-id" in lines[0], resumed.stderr[
        -3000:
    ]

    restarted = gristmill_run(work, *args, "--force-restart")
    assert restarted.returncode == 0, restarted.stderr[-4000:]
    docs = _documents(work / "runs" / "again")
    assert any("Thx" in text for text in docs.values())  # the new content, read again

    # other inputs: refused for this run directory, unless the run is discarded
    (work / "other").mkdir()
    (work / "other" / "b.jsonl").write_bytes(b"".join(_record(_text(3000, s)) + b"\n" for s in range(40, 50)))
    other = tuple("other" if a == "in" else a for a in args)
    refused = gristmill_run(work, *other)
    assert (
        refused.returncode == 2 and "other inputs" in refused.stderr and "--force-restart" in refused.stderr
    )
    replaced = gristmill_run(work, *other, "--force-restart")
    assert replaced.returncode == 0, replaced.stderr[-4000:]
    assert {doc_id.rsplit(":", 1)[0] for doc_id in _documents(work / "runs" / "again")} == {"other/b.jsonl"}
    assert len(_documents(work / "runs" / "again")) == 10
    assert json.loads((work / "runs" / "again" / "run.json").read_text())["inputs"] == [str(work / "other")]


# ------------------------------------------------------------ CLI errors: run ids, output, repeated inputs


def _cli_error(work: Path, *args: str, user: int | None = None) -> str:
    """`gristmill ARGS` as a process that must fail as a user error: exit 2 within 10 s (no retry),
    nothing on stdout, one line `gristmill: error: ...` on stderr; returns that line."""
    as_user: dict[str, Any] = {} if user is None else {"user": user, "group": user, "extra_groups": []}
    command = ["timeout", "-k", "5", "60", str(GRISTMILL), *args]
    start = time.monotonic()
    result = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=90, **as_user)
    seconds = time.monotonic() - start
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("gristmill: error: "), result.stderr[-3000:]
    assert result.stdout == "" and seconds < 10, (result.stdout, seconds)
    return lines[0]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """`cli(*args)`: the CLI's `main` in this process, in a folder with one small input folder `in/` and
    an empty `runs/`; asserts exit 2, nothing on stdout, one `gristmill: error:` line, and returns it."""
    from flows.cli import main

    (tmp_path / "in").mkdir()
    records = b"".join(_record(_text(500, seed)) + b"\n" for seed in range(3))
    (tmp_path / "in" / "a.jsonl").write_bytes(records)
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)

    def error(*args: str) -> str:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and out == "", (code, out, err)
        assert len(lines) == 1 and lines[0].startswith("gristmill: error: "), err
        return lines[0]

    error.work = tmp_path  # type: ignore[attr-defined]
    return error


def _written(work: Path) -> list[str]:
    """Everything under `work` besides the input folder."""
    return sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.parts[len(work.parts)] != "in")


@pytest.mark.parametrize(
    "flag",
    [
        ["--run-id", "../escaped"],
        ["--run-id", "a/b"],
        ["--run-id", "/tmp/abs"],
        ["--run-id", ""],
        ["--run-id", ".hidden"],
        ["--set", 'run_id="with\\0nul"'],
    ],
    ids=lambda flag: repr(flag[-1]),
)
def test_unsafe_run_ids_are_refused_before_anything_is_written(cli: Any, flag: list[str]) -> None:
    line = cli("run", "--input", "in", "--output", "runs", *flag)
    assert "invalid run id" in line and "letters, digits" in line
    assert "invalid run id" in cli("filter", "--input", "in", "--run", "runs/..")
    assert _written(cli.work) == ["runs"]


def test_missing_input_fails_at_once_without_a_run_directory(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_bytes(_record(_text(500, 0)) + b"\n")
    line = _cli_error(tmp_path, "run", "--input", "in", "missing", "--output", "runs", "--run-id", "r")
    assert line == f"gristmill: error: input path does not exist: '{tmp_path / 'missing'}'"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no runs/, no runs/r


@pytest.mark.parametrize(
    ("inputs", "reason"),
    [
        (["in", "in/"], "is given twice"),
        (["in", "./in"], "is given twice"),
        (["in", "in/a.jsonl"], "read twice"),
    ],
)
def test_repeated_inputs_are_refused(cli: Any, inputs: list[str], reason: str) -> None:
    assert reason in cli("run", "--input", *inputs, "--run", "runs/r")
    assert _written(cli.work) == ["runs"]


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Path]:
    """A folder this process cannot write in: read-only, and immutable (chattr +i) when the tests run as
    root, whom permissions do not stop."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("running as root on a file system without chattr +i")
    try:
        yield folder
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_read_only_output_is_refused(cli: Any, locked: Path) -> None:
    line = cli("run", "--input", "in", "--run", f"{locked}/r")
    assert f"cannot write in {locked} (" in line, line
    assert list(locked.iterdir()) == []


def test_output_below_a_file_is_refused(cli: Any) -> None:
    (cli.work / "file").write_text("not a folder")
    assert "is not a folder" in cli("run", "--input", "in", "--run", "file/runs/r")
    assert _written(cli.work) == ["file", "runs"]


def test_bad_config_and_policy_are_one_line(cli: Any) -> None:
    (cli.work / "typo.yaml").write_text("rules:\n  - {name: short, signal: word_count, mn: 50}\n")
    run = ("run", "--input", "in", "--run", "runs/r")
    assert "invalid policy" in cli(*run, "--policy", "typo.yaml")
    assert "cannot read policy" in cli(*run, "--policy", "missing.yaml")
    assert "dedup.threshold" in cli(*run, "--set", "dedup.threshold=7")
    assert "--set takes section.field=value" in cli(*run, "--set", "dedup.threshold")
    assert _written(cli.work) == ["runs", "typo.yaml"]


def test_stage_commands_and_status_need_an_existing_run(cli: Any) -> None:
    assert "not a run directory" in cli("tokenize", "--run", "runs/nonexistent")
    assert "not a run directory" in cli("dedup", "--run", "runs/nonexistent")
    assert "not a run directory" in cli("status", "runs/nonexistent")
    assert _written(cli.work) == ["runs"]


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = subprocess.run([str(GRISTMILL), "run", "--input", "missing", "--run", "runs/r", "--debug"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=90)  # fmt: skip
    assert result.returncode == 2 and "Traceback (most recent call last)" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"gristmill: error: input path does not exist: '{tmp_path / 'missing'}'"
