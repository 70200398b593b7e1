"""collect() end to end against the local fake engine: happy path, faults, duplicates, resume, sources."""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from PIL import Image

from cnnlab.collect import CollectConfig, CollectError, FetchConfig, SearchHit, collect_images, read_manifest
from cnnlab.collect.manifest import FolderLock
from cnnlab.imagedata.datasets import scan_dataset
from tests.helpers.fakeweb import FakeWeb, Route, bomb_png, make_image, resized

FIXTURES = Path(__file__).parents[1] / "helpers"
FAST = FetchConfig(timeout=0.5, deadline=1.0, retries=1, backoff=0.01, per_host=16, host_delay=0.0, max_bytes=200_000,
                   allow_private_hosts=True)  # the fake web is on 127.0.0.1


@pytest.fixture
def web() -> Iterator[FakeWeb]:
    server = FakeWeb().start()
    yield server
    server.stop()


def run(web: FakeWeb, out: Path, classes: list[str], per_class: int, **kw):
    kw.setdefault("fetch", FAST)
    kw.setdefault("threads", 4)
    kw.setdefault("min_size", 32)
    return collect_images(CollectConfig(out, classes, per_class, engine=kw.pop("engine", "bing"), engine_url=web.base, **kw))


def serve_class(web: FakeWeb, label: str, seeds: list[int], query: str | None = None, fmt: str = "JPEG") -> list[str]:
    paths = []
    for s in seeds:
        path = f"/img/{label}/{s}.{'png' if fmt == 'PNG' else 'jpg'}"
        web.add(path, Route(body=make_image(s, fmt=fmt), content_type=f"image/{fmt.lower()}"))
        paths.append(path)
    web.add_results(query or label, paths)
    return paths


def lines(out: Path) -> list[dict]:
    return read_manifest(out / "manifest.jsonl")


def by_url(out: Path, web: FakeWeb) -> dict[str, dict]:
    return {r["url"].removeprefix(web.base): r for r in lines(out)}


def dataset_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name != "manifest.jsonl"
                  and not any(part.startswith(".") for part in p.relative_to(out).parts))


# -- happy path -------------------------------------------------------------------------------


def test_happy_path_several_classes(web: FakeWeb, tmp_path: Path) -> None:
    serve_class(web, "cat", list(range(0, 6)))
    serve_class(web, "dog", list(range(10, 16)), fmt="PNG")
    serve_class(web, "golden_retriever", list(range(20, 26)), query="golden retriever")  # the default query
    out = tmp_path / "data"
    result = run(web, out, ["cat", "dog", "golden_retriever"], 4)
    assert result.complete and result.engine == "bing"
    assert [(c.label, c.ok, c.new, c.wanted) for c in result.classes] == [
        ("cat", 4, 4, 4), ("dog", 4, 4, 4), ("golden_retriever", 4, 4, 4)]
    for label, ext in (("cat", "jpg"), ("dog", "png"), ("golden_retriever", "jpg")):
        files = sorted((out / label).iterdir())
        assert len(files) == 4
        for f in files:
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            assert f.name == f"{digest[:16]}.{ext}"
    records = lines(out)
    assert len(records) == 12 and {r["status"] for r in records} == {"ok"}
    first = records[0]
    for key in ("class", "query", "engine", "url", "source_page", "sha256", "phash", "width", "height", "bytes",
                "status", "reason", "license", "timestamp", "path"):
        assert key in first
    assert first["source_page"].startswith(web.base + "/page/img/")
    assert {r["query"] for r in records if r["class"] == "golden_retriever"} == {"golden retriever"}
    assert (first["width"], first["height"]) == (96, 96) and len(first["phash"]) == 16
    # the dataset reader sees the same set, from the folders and from the manifest
    assert len(scan_dataset(out)) == 12
    assert scan_dataset(out / "manifest.jsonl").class_counts() == {"cat": 4, "dog": 4, "golden_retriever": 4}
    assert not (out / ".partial").exists()


def test_several_queries_per_class_are_interleaved(web: FakeWeb, tmp_path: Path) -> None:
    serve_class(web, "cat", [1, 2, 3], query="tabby cat")
    serve_class(web, "cat2", [4, 5, 6], query="house cat")
    out = tmp_path / "data"
    result = run(web, out, ["cat"], 4, queries={"cat": ["tabby cat", "house cat"]}, threads=1)
    assert result.classes[0].ok == 4
    assert sorted({r["query"] for r in lines(out)}) == ["house cat", "tabby cat"]


# -- faults -----------------------------------------------------------------------------------

FAULTS: dict[str, tuple[Route | bytes, str, str]] = {
    "/f/404.jpg": (Route(status=404, body=b"no", content_type="text/html"), "failed", "http-404"),
    "/f/500.jpg": (Route(status=500, body=b"no", content_type="text/html"), "failed", "http-500"),
    "/f/timeout.jpg": (Route(body=make_image(50), delay=3.0), "failed", "timeout"),
    "/f/drip.jpg": (Route(body=make_image(51), drip=0.02), "failed", "too-slow"),
    "/f/cut-short.jpg": (Route(body=make_image(52), declared_length=50_000), "failed", "incomplete-body"),
    "/f/truncated.jpg": (make_image(53, (256, 256), quality=95)[:5000], "rejected", "truncated"),
    "/f/html.jpg": (Route(body=b"<!doctype html><html><body>Forbidden</body></html>"), "rejected", "not-an-image"),
    "/f/huge.jpg": (Route(body=b"\xff\xd8" + b"\0" * 300_000), "rejected", "too-large"),
    "/f/loop.jpg": (Route(location="/f/loop2.jpg"), "failed", "redirect-loop"),
    "/f/bomb.png": (Route(body=bomb_png(), content_type="image/png"), "rejected", "decompression-bomb"),
    "/private/robots.jpg": (make_image(54), "rejected", "robots-disallowed"),
    "/f/noai.jpg": (Route(body=make_image(55), headers={"X-Robots-Tag": "noai"}), "rejected", "x-robots-noai"),
    "/f/tiny.jpg": (make_image(56, (20, 20)), "rejected", "too-small"),
}


def test_every_fault_ends_as_a_manifest_line_and_the_run_completes(web: FakeWeb, tmp_path: Path) -> None:
    web.robots = "User-agent: *\nDisallow: /private/\n"
    web.add("/f/loop2.jpg", Route(location="/f/loop.jpg"))
    for path, (route, _, _) in FAULTS.items():
        web.add(path, route)
    good = [f"/ok/{i}.jpg" for i in range(3)]
    for i, path in enumerate(good):
        web.add(path, make_image(60 + i))
    web.add_results("cat", [*FAULTS, *good])
    out = tmp_path / "data"
    started = time.monotonic()
    result = run(web, out, ["cat"], 3, threads=3)
    elapsed = time.monotonic() - started
    (cat,) = result.classes
    assert cat.ok == 3 and result.complete
    records = by_url(out, web)
    for path, (_, status, reason) in FAULTS.items():
        assert (records[path]["status"], records[path]["reason"]) == (status, reason), path
        assert records[path]["path"] == ""
    assert web.fetches("/private/robots.jpg") == 0
    assert cat.failed == {"http-404": 1, "http-500": 1, "incomplete-body": 1, "redirect-loop": 1, "timeout": 1,
                          "too-slow": 1}
    assert cat.rejected == {"decompression-bomb": 1, "not-an-image": 1, "robots-disallowed": 1, "too-large": 1,
                            "too-small": 1, "truncated": 1, "x-robots-noai": 1}
    assert len(dataset_files(out)) == 3
    assert elapsed < 15


# -- duplicates -------------------------------------------------------------------------------


def test_exact_near_and_cross_class_duplicates(web: FakeWeb, tmp_path: Path) -> None:
    a, b, c = make_image(1), make_image(2), make_image(3)
    web.add("/cat/a.jpg", a)
    web.add("/cat/a-mirror.jpg", a)  # the same bytes under another URL
    web.add("/cat/a-big.jpg", resized(a, (160, 160)))  # a resized copy
    web.add("/cat/b.jpg", b)
    web.add("/dog/a.jpg", a)  # the cat image again, under dog
    web.add("/dog/b-small.jpg", resized(b, (80, 80)))  # a resized cat image under dog
    web.add("/dog/c.jpg", c)
    web.add_results("cat", ["/cat/a.jpg", "/cat/a-mirror.jpg", "/cat/a-big.jpg", "/cat/b.jpg"])
    web.bing["dog"] = [(web.url(p), None) for p in ("/dog/a.jpg", "/dog/b-small.jpg", "/cat/b.jpg", "/dog/c.jpg")]
    out = tmp_path / "data"
    result = run(web, out, ["cat", "dog"], 3, threads=1)
    records = by_url(out, web)
    assert records["/cat/a.jpg"]["status"] == "ok"
    assert (records["/cat/a-mirror.jpg"]["status"], records["/cat/a-mirror.jpg"]["reason"]) == ("duplicate", "exact-duplicate")
    assert (records["/cat/a-big.jpg"]["status"], records["/cat/a-big.jpg"]["reason"]) == ("duplicate", "near-duplicate")
    assert records["/cat/a-big.jpg"]["duplicate_of"] == records["/cat/a.jpg"]["path"]
    assert records["/dog/a.jpg"]["reason"] == "cross-class-exact-duplicate"
    assert records["/dog/b-small.jpg"]["reason"] == "cross-class-near-duplicate"
    dog_lines = [r for r in lines(out) if r["class"] == "dog"]
    same_url = next(r for r in dog_lines if r["url"].endswith("/cat/b.jpg"))
    assert same_url["reason"] == "cross-class-exact-duplicate"
    assert web.fetches("/cat/b.jpg") == 1  # a URL kept under cat is not fetched again for dog
    cat, dog = result.classes
    assert (cat.ok, cat.duplicates, cat.cross_class_duplicates) == (2, 2, 0)
    assert (dog.ok, dog.duplicates, dog.cross_class_duplicates) == (1, 3, 3)
    assert not dog.met
    shas = [hashlib.sha256(f.read_bytes()).hexdigest() for f in dataset_files(out)]
    assert len(shas) == len(set(shas)) == 3


def test_near_duplicate_threshold_is_configurable(web: FakeWeb, tmp_path: Path) -> None:
    a = make_image(1)
    web.add("/a.jpg", a)
    web.add("/a-big.jpg", resized(a, (160, 160)))
    web.add_results("cat", ["/a.jpg", "/a-big.jpg"])
    result = run(web, tmp_path / "data", ["cat"], 2, near_dup_threshold=-1, threads=1)
    assert result.classes[0].ok == 2  # exact-only dedup keeps the resized copy


# -- resume -----------------------------------------------------------------------------------


def test_rerun_fetches_nothing_twice_and_raises_targets(web: FakeWeb, tmp_path: Path) -> None:
    paths = serve_class(web, "cat", list(range(8)))
    out = tmp_path / "data"
    first = run(web, out, ["cat"], 3, threads=1)
    assert first.classes[0].new == 3
    fetched = {p for p in paths if web.fetches(p)}
    again = run(web, out, ["cat"], 3)
    assert again.classes[0].new == 0 and again.fetched == 0 and again.complete
    more = run(web, out, ["cat"], 6)
    assert (more.classes[0].ok, more.classes[0].new) == (6, 3)
    assert all(web.fetches(p) <= 1 for p in paths)  # nothing fetched twice
    assert sum(web.fetches(p) for p in paths) == 6 and fetched <= {p for p in paths if web.fetches(p)}
    assert len(dataset_files(out)) == 6 and len(lines(out)) == 6


def test_resume_after_a_crash_between_manifest_line_and_rename(web: FakeWeb, tmp_path: Path) -> None:
    paths = serve_class(web, "cat", list(range(6)))
    out = tmp_path / "data"
    run(web, out, ["cat"], 3, threads=1)
    # simulate kill -9: one file still in .partial (its manifest line written), a stray temp file,
    # and half a manifest line
    victim = next((out / "cat").iterdir())
    (out / ".partial").mkdir()
    victim.rename(out / ".partial" / f"{victim.stem}-deadbeef0000.{victim.suffix[1:]}.tmp")
    (out / ".partial" / "0123456789abcdef-cafe.jpg.tmp").write_bytes(b"half a fil")
    with (out / "manifest.jsonl").open("ab") as fh:
        fh.write(b'{"class": "cat", "url": "http://127.0.0.1/x.jpg", "sta')
    result = run(web, out, ["cat"], 4, threads=1)
    assert result.classes[0].ok == 4
    assert victim.is_file()  # rolled forward, not fetched again
    assert all(web.fetches(p) <= 1 for p in paths)
    assert not (out / ".partial").exists()
    assert (out / "manifest.jsonl").read_bytes().endswith(b"\n")
    assert len(lines(out)) == 4 and len(dataset_files(out)) == 4


def test_a_file_deleted_by_hand_is_not_fetched_again(web: FakeWeb, tmp_path: Path) -> None:
    paths = serve_class(web, "cat", list(range(6)))
    out = tmp_path / "data"
    run(web, out, ["cat"], 2, threads=1)
    removed = next((out / "cat").iterdir())
    removed.unlink()
    result = run(web, out, ["cat"], 2, threads=1)
    assert result.classes[0].ok == 2 and result.classes[0].rejected == {"removed": 1}
    assert all(web.fetches(p) <= 1 for p in paths)
    assert not removed.exists()


def test_retry_failed(web: FakeWeb, tmp_path: Path) -> None:
    web.add("/flaky.jpg", Route(body=make_image(1), fail_times=2))
    web.add_results("cat", ["/flaky.jpg"])
    out = tmp_path / "data"
    first = run(web, out, ["cat"], 1, fetch=FetchConfig(timeout=0.5, retries=0, per_host=4, host_delay=0, allow_private_hosts=True))
    assert first.classes[0].failed == {"http-503": 1}
    assert run(web, out, ["cat"], 1).classes[0].ok == 0  # failed URLs are left alone by default
    assert run(web, out, ["cat"], 1, retry_failed=True).classes[0].ok == 1


def test_one_collect_per_folder(web: FakeWeb, tmp_path: Path) -> None:
    out = tmp_path / "data"
    with FolderLock(out), pytest.raises(CollectError, match="another `cnnlab collect`"):
        run(web, out, ["cat"], 1)


# -- engines that return nothing, a custom engine --------------------------------------------


def test_google_returning_nothing_is_said_plainly(web: FakeWeb, tmp_path: Path) -> None:
    web.add("/search", Route(body=(FIXTURES / "google_empty.html").read_bytes(), content_type="text/html"))
    result = run(web, tmp_path / "data", ["cat"], 5, engine="google")
    (cat,) = result.classes
    assert cat.ok == 0 and not result.complete
    assert "google returned no results for 'cat' (Google's icrawler parser is broken upstream" in cat.notes[0]


def test_a_failing_engine_is_a_note_not_a_crash(web: FakeWeb, tmp_path: Path) -> None:
    result = run(web, tmp_path / "data", ["cat"], 5, engine="baidu")  # /search/acjson is a 404 here
    assert "baidu search for 'cat' failed: http-404" in result.classes[0].notes[0]


class BrokenEngine:
    name = "broken"
    no_results_hint = "it is broken upstream"

    def search(self, query: str, *, limit: int, filters: Mapping[str, str], fetch_page) -> Iterator[SearchHit]:
        raise ValueError("the result page changed its layout")
        yield  # pragma: no cover


def test_an_engine_that_breaks_is_a_note(tmp_path: Path) -> None:
    result = collect_images(CollectConfig(tmp_path / "data", ["cat"], 2, engine=BrokenEngine(), fetch=FAST))
    assert result.classes[0].notes[0] == (
        "broken search for 'cat' failed: ValueError: the result page changed its layout (it is broken upstream)")


class LocalEngine:
    """A whole new engine in a few lines: the interface is name, no_results_hint, search()."""

    name = "local"
    no_results_hint = ""

    def __init__(self, web: FakeWeb, paths: list[str]) -> None:
        self.web, self.paths = web, paths

    def search(self, query: str, *, limit: int, filters: Mapping[str, str], fetch_page) -> Iterator[SearchHit]:
        for p in self.paths[:limit]:
            yield SearchHit(self.web.url(p), source_page=self.web.url("/about"), license="CC0")


def test_a_custom_engine_plugs_in(web: FakeWeb, tmp_path: Path) -> None:
    for i in range(3):
        web.add(f"/x/{i}.jpg", make_image(i))
    out = tmp_path / "data"
    result = collect_images(CollectConfig(out, ["cat"], 3, engine=LocalEngine(web, [f"/x/{i}.jpg" for i in range(3)]), fetch=FAST,
                     min_size=32))
    assert result.classes[0].ok == 3 and result.engine == "local"
    assert {(r["engine"], r["license"]) for r in lines(out)} == {("local", "CC0")}


# -- URL lists and folders --------------------------------------------------------------------


def test_url_lists_txt_csv_jsonl(web: FakeWeb, tmp_path: Path) -> None:
    for i in range(6):
        web.add(f"/u/{i}.jpg", make_image(i))
    txt = tmp_path / "cats.txt"
    txt.write_text(f"# cats\n{web.url('/u/0.jpg')}\n\n{web.url('/u/1.jpg')}\n")
    csv_file = tmp_path / "list.csv"
    csv_file.write_text(f"url,label,license\n{web.url('/u/2.jpg')},dog,CC-BY\n{web.url('/u/3.jpg')},dog,\n")
    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text("\n".join(json.dumps({"url": web.url(f"/u/{i}.jpg"), "label": "car"}) for i in (4, 5)) + "\n")
    out = tmp_path / "data"
    r1 = collect_images(CollectConfig(out, urls=txt, label="cat", per_class=None, fetch=FAST, min_size=32))
    r2 = collect_images(CollectConfig(out, urls=csv_file, per_class=None, fetch=FAST, min_size=32))
    r3 = collect_images(CollectConfig(out, urls=jsonl, per_class=None, fetch=FAST, min_size=32))
    assert [(c.label, c.ok, c.wanted) for r in (r1, r2, r3) for c in r.classes] == [
        ("cat", 2, 2), ("dog", 2, 2), ("car", 2, 2)]
    assert {r["engine"] for r in lines(out)} == {"urls"}
    assert [r["license"] for r in lines(out) if r["class"] == "dog"] in (["CC-BY", None], [None, "CC-BY"])


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        ("http://x/a.jpg\n", "a.txt", "give the class of its images"),
        ("url,label\nhttp://x/a.jpg,../evil\n", "a.csv", "cannot be used as a folder name"),
        ("link,label\nhttp://x/a.jpg,cat\n", "a.csv", "'url' column"),
    ],
)
def test_bad_url_lists_are_refused(tmp_path: Path, content: str, name: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(CollectError, match=message):
        collect_images(CollectConfig(tmp_path / "data", urls=path, per_class=None))


def test_a_bad_class_name_in_a_url_list_is_left_out_and_said_and_the_run_goes_on(web: FakeWeb, tmp_path: Path) -> None:
    for i in range(2):
        web.add(f"/u/{i}.jpg", make_image(i))
    path = tmp_path / "list.csv"
    path.write_text(f"url,label\n{web.url('/u/0.jpg')},dog\n{web.url('/u/1.jpg')},a:b\n")
    result = collect_images(CollectConfig(tmp_path / "data", urls=path, per_class=None, fetch=FAST, min_size=32))
    assert [(c.label, c.ok) for c in result.classes] == [("dog", 1)]
    assert any("1 rows of the URL list left out" in n and "list.csv:3" in n and "'a:b'" in n for n in result.notes)


def test_import_a_folder(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    (src / "cat").mkdir(parents=True)
    (src / "dog" / "more").mkdir(parents=True)
    (src / "cat" / "1.jpg").write_bytes(make_image(1))
    (src / "cat" / "1-copy.jpg").write_bytes(make_image(1))
    (src / "cat" / "notes.txt").write_text("not an image")
    (src / "cat" / "broken.jpg").write_bytes(make_image(9, (256, 256), quality=95)[:4000])
    (src / "dog" / "2.png").write_bytes(make_image(2, fmt="PNG"))
    (src / "dog" / "more" / "3.jpg").write_bytes(make_image(3))
    (src / "_ignored").mkdir()
    (src / "_ignored" / "4.jpg").write_bytes(make_image(4))
    out = tmp_path / "data"
    result = collect_images(CollectConfig(out, from_folder=src, per_class=None, min_size=32))
    cat, dog = result.classes
    assert (cat.label, cat.ok, cat.duplicates, cat.rejected) == ("cat", 1, 1, {"not-an-image": 1, "truncated": 1})
    assert (dog.label, dog.ok) == ("dog", 2)
    assert result.engine == "folder"
    assert all(r["url"].startswith("file://") for r in lines(out))
    assert (src / "cat" / "1.jpg").exists()  # imported by copying


def test_exif_orientation_is_recorded_with_upright_size(web: FakeWeb, tmp_path: Path) -> None:
    img = Image.open(io.BytesIO(make_image(7, (120, 80)))).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    web.add("/rot.jpg", buf.getvalue())
    web.add_results("cat", ["/rot.jpg"])
    out = tmp_path / "data"
    run(web, out, ["cat"], 1)
    (rec,) = lines(out)
    assert (rec["status"], rec["orientation"], rec["width"], rec["height"]) == ("ok", 6, 80, 120)
    assert (out / rec["path"]).read_bytes() == buf.getvalue()  # stored as downloaded
