"""collect into shards (``format`` webdataset or parquet): readable by their libraries, labels right, shard size
kept, bad images counted and not written, and resumable after ``kill -9`` with nothing lost or duplicated."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cnnlab.collect import CollectConfig, CollectError, FetchConfig, collect_images, read_manifest
from tests.helpers.fakeweb import FakeWeb, Route, make_image

FAST = FetchConfig(timeout=1.0, retries=0, per_host=16, host_delay=0.0, allow_private_hosts=True)


@pytest.fixture
def web() -> Iterator[FakeWeb]:
    server = FakeWeb().start()
    yield server
    server.stop()


def url_list(web: FakeWeb, folder: Path, labels: dict[str, range], *, extra: list[tuple[str, str]] = ()) -> Path:
    """Serve one image per seed and write ``url,label`` rows for them (plus ``extra`` rows)."""
    rows = []
    for label, seeds in labels.items():
        for s in seeds:
            path = f"/img/{label}/{s}.jpg"
            web.add(path, make_image(s))
            rows.append((web.url(path), label))
    rows.extend(extra)
    csv_path = folder / "urls.csv"
    csv_path.write_text("url,label\n" + "".join(f"{u},{lab}\n" for u, lab in rows), encoding="utf-8")
    return csv_path


def collect(out: Path, urls: Path, fmt: str, shard_size: int, threads: int = 4):
    return collect_images(CollectConfig(out=out, urls=urls, per_class=None, format=fmt,  # type: ignore[arg-type]
                                        shard_size=shard_size, min_size=32, threads=threads, fetch=FAST))


def ok_lines(out: Path) -> list[dict]:
    last = {(r["class"], r["url"]): r for r in read_manifest(out / "manifest.jsonl")}
    return [r for r in last.values() if r["status"] == "ok"]


def tar_samples(out: Path) -> list[dict]:
    import webdataset as wds

    shards = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    return list(wds.WebDataset(shards, shardshuffle=False))


def test_webdataset_shards_read_with_webdataset(web: FakeWeb, tmp_path: Path) -> None:
    web.add("/bad.jpg", b"<html>not an image</html>")
    urls = url_list(web, tmp_path, {"cat": range(0, 6), "dog": range(100, 105)},
                    extra=[(web.url("/bad.jpg"), "cat"), (web.url("/img/cat/2.jpg"), "dog")])
    out = tmp_path / "set"
    result = collect(out, urls, "webdataset", 4)

    shards = sorted((out / "shards").glob("*.tar"))
    assert [p.name for p in shards] == ["00000.tar", "00001.tar", "00002.tar"]
    assert result.format == "webdataset" and result.shards == shards
    classes = json.loads((out / "shards" / "classes.json").read_text())
    assert classes == ["cat", "dog"]
    by_class = {c.label: c for c in result.classes}
    assert (by_class["cat"].ok, by_class["cat"].rejected) == (6, {"not-an-image": 1})  # counted, not written
    assert (by_class["dog"].ok, by_class["dog"].cross_class_duplicates) == (5, 1)

    samples = tar_samples(out)
    assert len(samples) == 11 and len({s["__key__"] for s in samples}) == 11
    per_shard: dict[str, int] = {}
    urls_seen = set()
    for s in samples:
        meta = json.loads(s["json"])
        assert int(s["cls"]) == meta["class_index"] == classes.index(meta["label"])
        assert meta["label"] == meta["url"].split("/")[-2]  # served under /img/<label>/
        assert hashlib.sha256(s["jpg"]).hexdigest() == meta["sha256"] and meta["key"] == s["__key__"]
        assert meta["sha256"].startswith(s["__key__"]) and (meta["width"], meta["height"]) == (96, 96)
        urls_seen.add(meta["url"])
        shard = Path(s["__url__"]).name
        per_shard[shard] = per_shard.get(shard, 0) + 1
    assert per_shard == {"00000.tar": 4, "00001.tar": 4, "00002.tar": 3}  # the shard size, the last one shorter
    assert web.url("/bad.jpg") not in urls_seen

    lines = ok_lines(out)  # the main manifest names shard and member of every image
    assert {r["url"] for r in lines} == urls_seen
    members = {(Path(s["__url__"]).name, f"{s['__key__']}.jpg") for s in samples}
    assert {(Path(r["shard"]).name, r["member"]) for r in lines} == members
    assert all(r["path"] == f"{r['shard']}/{r['member']}" for r in lines)
    with (out / "shards" / "00000.manifest.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and {r["member"] for r in rows} == {m for s, m in members if s == "00000.tar"}
    assert not (out / ".journal").exists() and not list((out / "shards").glob("*.tmp"))
    assert not [p for p in out.iterdir() if p.is_dir() and p.name in ("cat", "dog")]  # no loose files


def test_parquet_shards_read_with_pyarrow_and_datasets(web: FakeWeb, tmp_path: Path) -> None:
    import datasets
    import pyarrow.parquet as pq

    urls = url_list(web, tmp_path, {"cat": range(0, 5), "dog": range(100, 103)})
    out = tmp_path / "set"
    collect(out, urls, "parquet", 3)
    shards = sorted((out / "shards").glob("*.parquet"))
    assert [p.name for p in shards] == ["00000.parquet", "00001.parquet", "00002.parquet"]
    assert [pq.read_metadata(p).num_rows for p in shards] == [3, 3, 2]
    table = pq.read_table(shards[0])
    assert {"image", "label", "url", "sha256", "width", "height", "key"} <= set(table.column_names)
    row = table.slice(0, 1).to_pylist()[0]
    assert hashlib.sha256(row["image"]["bytes"]).hexdigest() == row["sha256"]
    assert row["image"]["path"] == f"{row['key']}.jpg"

    ds = datasets.load_dataset("parquet", data_files=[str(p) for p in shards], split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.features["label"].names == ["cat", "dog"]
    assert len(ds) == 8
    for item in ds:
        assert ds.features["label"].int2str(item["label"]) == item["url"].split("/")[-2]
        assert item["image"].size == (96, 96)


class _Interrupt(Exception):
    pass


def die_after(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make the run die after ``n`` decided candidates, as a crash would leave it (the shard being written
    not done)."""
    from cnnlab.collect.job import _Run

    real = _Run._decide
    count = [0]

    def decide(self: _Run, *args: object) -> None:
        if count[0] == n:
            raise _Interrupt
        count[0] += 1
        real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(_Run, "_decide", decide)


def test_an_unfinished_shard_is_completed_from_the_journal_not_fetched_again(
    web: FakeWeb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    urls = url_list(web, tmp_path, {"cat": range(0, 10)})
    out = tmp_path / "set"
    die_after(monkeypatch, 6)
    with pytest.raises(_Interrupt):
        collect(out, urls, "webdataset", 4, threads=1)
    monkeypatch.undo()
    assert [p.name for p in (out / "shards").glob("*.tar")] == ["00000.tar"]  # the second shard is not there
    journal = out / ".journal" / "00001.tar"  # the unfinished shard, written as it goes: its images are kept
    with tarfile.open(journal) as tar:
        assert len([n for n in tar.getnames() if n.endswith(".jpg")]) == 2
    kept = [r["url"].removeprefix(web.base) for r in ok_lines(out)]
    assert len(kept) == 6

    result = collect(out, urls, "webdataset", 4)
    assert [c.ok for c in result.classes] == [10]
    assert [web.hits[path] for path in kept] == [1] * 6  # nothing kept before is fetched again
    samples = tar_samples(out)
    assert sorted(json.loads(s["json"])["url"] for s in samples) == sorted(web.url(f"/img/cat/{i}.jpg") for i in range(10))
    assert [p.name for p in sorted((out / "shards").glob("*.tar"))] == ["00000.tar", "00001.tar", "00002.tar"]


def test_a_journal_cut_short_by_a_crash_keeps_every_whole_image(
    web: FakeWeb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    urls = url_list(web, tmp_path, {"cat": range(0, 8)})
    out = tmp_path / "set"
    die_after(monkeypatch, 5)
    with pytest.raises(_Interrupt):
        collect(out, urls, "webdataset", 100, threads=1)
    monkeypatch.undo()
    kept = [r["url"].removeprefix(web.base) for r in read_manifest(out / "manifest.jsonl") if r["status"] == "ok"]
    assert len(kept) == 5
    journal = out / ".journal" / "00000.tar"
    with journal.open("r+b") as fh:  # the last image's members cut off mid-way, as by a kill during a write
        fh.truncate(journal.stat().st_size - 2500)
    result = collect(out, urls, "webdataset", 100)
    assert [c.ok for c in result.classes] == [8]
    assert [web.hits[p] for p in kept] == [1, 1, 1, 1, 2]  # only the image cut short is fetched again
    samples = tar_samples(out)
    assert len(samples) == 8 and len({hashlib.sha256(s["jpg"]).hexdigest() for s in samples}) == 8


def test_lost_journal_images_are_fetched_again(web: FakeWeb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    urls = url_list(web, tmp_path, {"cat": range(0, 5)})
    out = tmp_path / "set"
    die_after(monkeypatch, 3)
    with pytest.raises(_Interrupt):
        collect(out, urls, "parquet", 10, threads=1)
    monkeypatch.undo()
    lost_urls = [r["url"].removeprefix(web.base) for r in ok_lines(out)]
    assert len(lost_urls) == 3
    (out / ".journal" / "00000.parquet.tar").unlink()  # the journal is gone: its images come again, not counted kept
    result = collect(out, urls, "parquet", 10)
    assert [c.ok for c in result.classes] == [5]
    table = pq.read_table(out / "shards" / "00000.parquet")
    assert sorted(table.column("url").to_pylist()) == sorted(web.url(f"/img/cat/{i}.jpg") for i in range(5))
    assert [web.hits[path] for path in lost_urls] == [2, 2, 2]  # the lost ones fetched again, once


def test_a_set_continues_in_its_own_format_and_keeps_class_indices(web: FakeWeb, tmp_path: Path) -> None:
    urls = url_list(web, tmp_path, {"cat": range(0, 3)})
    out = tmp_path / "set"
    collect(out, urls, "webdataset", 2)
    with pytest.raises(CollectError, match="collected as webdataset"):
        collect(out, urls, "files", 2)
    with pytest.raises(CollectError, match="collected as webdataset"):
        collect(out, urls, "parquet", 2)
    more = tmp_path / "more"
    more.mkdir()
    urls2 = url_list(web, more, {"ant": range(200, 203)})
    result = collect(out, urls2, "webdataset", 2)
    assert json.loads((out / "shards" / "classes.json").read_text()) == ["cat", "ant"]  # appended, never renumbered
    assert [p.name for p in result.shards] == ["00002.tar", "00003.tar"]
    samples = tar_samples(out)
    assert len(samples) == 6
    for s in samples:
        meta = json.loads(s["json"])
        assert int(s["cls"]) == ["cat", "ant"].index(meta["label"])


def test_parquet_shards_name_every_class_after_a_later_run_adds_one(web: FakeWeb, tmp_path: Path) -> None:
    """``datasets`` takes the features of Parquet files from the first: every shard must name every class."""
    import datasets

    out = tmp_path / "set"
    collect(out, url_list(web, tmp_path, {"cat": range(0, 3)}), "parquet", 2)
    more = tmp_path / "more"
    more.mkdir()
    collect(out, url_list(web, more, {"ant": range(200, 202)}), "parquet", 2)
    shards = sorted(str(p) for p in (out / "shards").glob("*.parquet"))
    assert len(shards) == 3
    ds = datasets.load_dataset("parquet", data_files=shards, split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert ds.features["label"].names == ["cat", "ant"]
    assert sorted(ds.features["label"].int2str(r["label"]) for r in ds) == ["ant", "ant", "cat", "cat", "cat"]
    assert [r["url"].split("/")[-2] for r in ds] == [ds.features["label"].int2str(r["label"]) for r in ds]


def test_shard_size_is_checked() -> None:
    with pytest.raises(CollectError, match="shard size"):
        CollectConfig(out=Path("x"), urls=Path("u.csv"), shard_size=0)


# -- kill -9 ----------------------------------------------------------------------------------


def _command(urls: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "cnnlab", "collect", "--urls", str(urls), "--out", str(out), "--format", "webdataset",
        "--shard-size", "3", "--threads", "2", "--per-host", "4", "--host-delay", "0", "--timeout", "2",
        "--retries", "0", "--min-size", "32", "--quiet", "--json", "--allow-private-hosts",
    ]  # fmt: skip


def test_kill_9_mid_run_then_resume_loses_and_duplicates_nothing(web: FakeWeb, tmp_path: Path) -> None:
    rows = []
    for label, offset in (("cat", 0), ("dog", 100)):
        for i in range(8):
            path = f"/img/{label}/{i}.jpg"
            web.add(path, Route(body=make_image(offset + i), delay=0.1))
            rows.append(f"{web.url(path)},{label}")
    urls = tmp_path / "urls.csv"
    urls.write_text("url,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "set"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_command(urls, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 60
    journal = out / ".journal"

    def mid_shard() -> bool:  # enough kept, and some of it only in the journal (the shard being written)
        return len(ok_lines(out)) >= 5 and any(p.stat().st_size for p in journal.glob("*.tar"))

    while not mid_shard() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.kill()  # SIGKILL: no cleanup of any kind
    proc.wait(timeout=10)

    before = {r["url"] for r in ok_lines(out)}
    assert 5 <= len(before) < 16
    complete = sorted((out / "shards").glob("*.tar"))
    assert len(complete) < 6  # some images were only in the journal or the unfinished shard
    hits_before = dict(web.hits)

    done = subprocess.run(_command(urls, out), capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert [(c["label"], c["ok"]) for c in summary["classes"]] == [("cat", 8), ("dog", 8)]
    for url in before:  # nothing kept before the kill is fetched again
        path = url.removeprefix(web.base)
        assert web.hits[path] == hits_before[path] == 1, path
    samples = tar_samples(out)
    assert len(samples) == 16
    digests = [hashlib.sha256(s["jpg"]).hexdigest() for s in samples]
    assert len(set(digests)) == 16  # nothing twice
    assert sorted(json.loads(s["json"])["url"] for s in samples) == sorted(r.split(",")[0] for r in rows)
    lines = ok_lines(out)
    assert len(lines) == 16 and all((out / r["shard"]).is_file() for r in lines)
    assert not (out / ".journal").exists() and not (out / ".partial").exists()
    assert not list((out / "shards").glob("*.tmp"))


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_collected_shards_are_data_for_every_reading_command(web: FakeWeb, tmp_path: Path, fmt: str) -> None:
    """What collect writes, cnnlab's own reader takes back: the same images under the same class names."""
    from cnnlab.imagedata.datasets import scan_dataset

    urls = url_list(web, tmp_path, {"cat": range(5), "dog": range(10, 14)})
    out = tmp_path / "data"
    collect(out, urls, fmt, shard_size=4)
    images = scan_dataset(out / "shards")
    assert images.classes == ["cat", "dog"] and images.class_counts() == {"cat": 5, "dog": 4}
    assert images.skipped == []
    digests = {hashlib.sha256(Path(p).read_bytes()).hexdigest() if Path(p).is_file() else None for p in images.paths}
    assert digests == {None}  # records inside the shards, not loose files
