"""`cnnlab collect` on the command line, and collect -> split -> bench end to end on the fake engine."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnnlab.cli.app import app
from tests.helpers.fakeweb import FakeWeb, Route, make_image

runner = CliRunner()
FIXTURES = Path(__file__).parents[1] / "helpers"
NET = ["--threads", "4", "--per-host", "8", "--host-delay", "0", "--timeout", "1", "--retries", "0", "--min-size", "32",
       "--allow-private-hosts"]  # the fake web is on 127.0.0.1


@pytest.fixture
def web() -> Iterator[FakeWeb]:
    server = FakeWeb().start()
    for label, offset in (("cat", 0), ("dog", 100), ("car", 200)):
        paths = []
        for i in range(12):
            paths.append(f"/img/{label}/{i}.jpg")
            web_path = paths[-1]
            server.add(web_path, make_image(offset + i, (112, 96)))
        server.add_results(label, paths)
    server.add("/img/cat/broken.jpg", Route(status=404))
    server.bing["cat"].insert(0, (server.url("/img/cat/broken.jpg"), None))
    yield server
    server.stop()


def test_collect_json(web: FakeWeb, tmp_path: Path) -> None:
    out = tmp_path / "data"
    result = runner.invoke(app, ["collect", "--classes", "cat,dog", "--per-class", "5", "--engine-url", web.base,
                                 "--out", str(out), "--json", "--quiet", *NET])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["complete"] is True and payload["engine"] == "bing"
    cat = payload["classes"][0]
    assert (cat["label"], cat["ok"], cat["failed"]) == ("cat", 5, {"http-404": 1})
    assert len(list((out / "dog").iterdir())) == 5


def test_collect_table_and_plain_no_results_message(web: FakeWeb, tmp_path: Path) -> None:
    web.add("/search", Route(body=(FIXTURES / "google_empty.html").read_bytes(), content_type="text/html"))
    result = runner.invoke(app, ["collect", "-c", "cat", "-n", "3", "--engine", "google", "--engine-url", web.base,
                                 "--out", str(tmp_path / "g"), "-q", *NET])
    assert result.exit_code == 0, result.output  # the run itself worked: it just found nothing
    assert "google returned no results for 'cat' (Google's icrawler parser is broken upstream" in result.stdout
    assert "cat" in result.stdout and "0 new images" in result.stdout


def test_collect_queries_and_progress(web: FakeWeb, tmp_path: Path) -> None:
    web.add_results("tabby", [f"/img/cat/{i}.jpg" for i in range(3)])
    result = runner.invoke(app, ["collect", "--query", "cat=tabby", "-n", "2", "--engine-url", web.base,
                                 "--out", str(tmp_path / "q"), *NET])
    assert result.exit_code == 0, result.output
    assert "cat" in result.stderr  # the progress bar goes to stderr
    lines = [json.loads(x) for x in (tmp_path / "q" / "manifest.jsonl").read_text().splitlines()]
    assert {x["query"] for x in lines} == {"tabby"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--per-class", "3"], "name the classes"),
        (["--query", "cat tabby"], "CLASS=terms"),
        (["--classes", "cat", "--engine", "altavista"], "'altavista' is not one of"),
        (["--classes", "cat", "--engine", "flickr"], "API key"),
        (["--engine", "urls"], "needs a URL list"),
        (["--classes", "../up"], "folder name"),
        (["--classes", "cat", "--size", "gigantic"], "unsupported filter"),
    ],
)
def test_collect_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLICKR_API_KEY", raising=False)
    monkeypatch.delenv("FLICKR_APIKEY", raising=False)
    result = runner.invoke(app, ["collect", "--out", str(tmp_path / "x"), "--engine-url", "http://127.0.0.1:9", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_collect_from_a_url_list(web: FakeWeb, tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(web.url(f"/img/car/{i}.jpg") for i in range(4)) + "\n")
    result = runner.invoke(app, ["collect", "--urls", str(urls), "--label", "car", "--out", str(tmp_path / "u"),
                                 "--json", "-q", *NET])
    assert result.exit_code == 0, result.output
    (car,) = json.loads(result.stdout)["classes"]
    assert (car["label"], car["wanted"], car["ok"]) == ("car", 4, 4)


@pytest.mark.slow
def test_collect_then_split_then_bench(web: FakeWeb, tmp_path: Path) -> None:
    data = tmp_path / "data"
    collected = runner.invoke(app, ["collect", "-c", "cat,dog,car", "-n", "10", "--engine-url", web.base,
                                    "--out", str(data), "-q", *NET])
    assert collected.exit_code == 0, collected.output
    split = runner.invoke(app, ["split", str(data), "--val", "0.2", "--test", "0.2", "--seed", "0", "--json"])
    assert split.exit_code == 0, split.output
    n_test = json.loads(split.stdout)["totals"]["test"]
    assert n_test == 6
    results = tmp_path / "bench"
    bench = runner.invoke(app, ["bench", str(data), "--split", "test", "--models", "squeezenet1_1", "--random-weights",
                                "--in-process", "--out", str(results), "-q", "--workers", "0", "--repeats", "3",
                                "-b", "4", "--no-plots"])
    assert bench.exit_code == 0, bench.output
    (row,) = list(csv.DictReader((results / "results.csv").open()))
    assert row["status"] == "ok" and int(row["eval_images"]) == n_test and int(row["skipped_images"]) == 0


def test_collect_table_wide_adds_the_found_column(web: FakeWeb, tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(web.url(f"/img/car/{i}.jpg") for i in range(3)) + "\n")
    args = ["collect", "--urls", str(urls), "--label", "car", "--out", str(tmp_path / "u"), "-q", *NET]
    plain = runner.invoke(app, args, env={"COLUMNS": "60"})
    assert plain.exit_code == 0, plain.output
    assert "found" not in plain.stdout and "3 new images" in plain.stdout
    wide = runner.invoke(app, [*args, "--wide"], env={"COLUMNS": "60"})
    assert wide.exit_code == 0, wide.output
    header = next(line for line in wide.stdout.splitlines() if "class" in line and "found" in line)
    assert "duplicates" in header and "failed" in header  # one unwrapped line, however narrow the terminal


def test_collect_into_webdataset_shards(web: FakeWeb, tmp_path: Path) -> None:
    out = tmp_path / "data"
    result = runner.invoke(app, ["collect", "--classes", "cat,dog", "--per-class", "5", "--engine-url", web.base,
                                 "--out", str(out), "--format", "webdataset", "--shard-size", "4", "--json", "-q", *NET])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["format"] == "webdataset"
    assert [Path(p).name for p in payload["shards"]] == ["00000.tar", "00001.tar", "00002.tar"]
    assert json.loads((out / "shards" / "classes.json").read_text()) == ["cat", "dog"]
    assert not (out / "cat").exists()
    table = runner.invoke(app, ["collect", "-c", "cat", "-n", "6", "--engine-url", web.base, "-o", str(out),
                                "--format", "webdataset", "-q", *NET])
    assert table.exit_code == 0, table.output
    assert "webdataset shards: 1 completed by this run" in table.stdout


def test_collect_shard_options_are_checked(web: FakeWeb, tmp_path: Path) -> None:
    bad = runner.invoke(app, ["collect", "-c", "cat", "-o", str(tmp_path / "a"), "--format", "zip"])
    assert bad.exit_code == 2 and "zip" in bad.output
    zero = runner.invoke(app, ["collect", "-c", "cat", "-o", str(tmp_path / "a"), "--format", "parquet",
                               "--shard-size", "0"])
    assert zero.exit_code == 2
    review = runner.invoke(app, ["collect", "-c", "cat", "-o", str(tmp_path / "b"), "--format", "parquet", "--review",
                                 "--engine-url", web.base, *NET])
    assert review.exit_code == 2 and "review" in review.output
    assert not (tmp_path / "b").exists()  # refused before the crawl
    help_text = runner.invoke(app, ["collect", "--help"], env={"COLUMNS": "200"}).stdout
    assert "files|webdataset|parquet" in help_text and "--shard-size" in help_text
