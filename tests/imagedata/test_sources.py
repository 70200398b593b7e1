"""Datasets as people store them: Hugging Face datasets (saved, Parquet), WebDataset shards, read like folders."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from cnnlab.errors import DatasetError
from cnnlab.imagedata.datasets import expand_paths, scan_dataset
from cnnlab.imagedata.decode import read_regular_file
from cnnlab.models.registry import OFFLINE_MODEL
from tests.helpers.images import grid_tiles, jpeg
from tests.helpers.runs import SMALL_TRAIN_ARGS

datasets = pytest.importorskip("datasets")
wds = pytest.importorskip("webdataset")

CLASSES = ["cat", "coffee"]


def _photos() -> dict[str, list[bytes]]:
    """Four real 96-pixel JPEG tiles of each of two photographs (skimage's cat and coffee cup)."""
    from skimage import data as sk

    return {"cat": [jpeg(t) for t in grid_tiles(Image.fromarray(sk.chelsea()), 4, 96)],
            "coffee": [jpeg(t) for t in grid_tiles(Image.fromarray(sk.coffee()), 4, 96)]}


def _dataset(images: list[bytes], labels: list[int], names: list[str]) -> Any:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    rows = {"image": [{"bytes": b, "path": n + ".jpg"} for b, n in zip(images, names)], "label": labels}
    return datasets.Dataset.from_dict(rows, features=features)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same eight photos as class folders, a saved dataset, a saved dataset with splits, Parquet and shards."""
    root = tmp_path_factory.mktemp("stored")
    images, labels, names = [], [], []
    for label, (cls, photos) in enumerate(_photos().items()):
        for i, data in enumerate(photos):
            path = root / "folder" / cls / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            images.append(data)
            labels.append(label)
            names.append(f"{cls}_{i}")
    ds = _dataset(images, labels, names)
    ds.save_to_disk(str(root / "saved"))
    datasets.DatasetDict({"train": ds, "validation": ds.select(range(0, 8, 2)).flatten_indices()}).save_to_disk(
        str(root / "splits"))
    (root / "parquet").mkdir()
    ds.to_parquet(str(root / "parquet" / "set.parquet"))
    (root / "shards").mkdir()
    for shard in range(2):
        with wds.TarWriter(str(root / "shards" / f"set-{shard:06d}.tar")) as sink:
            for j in range(shard * 4, shard * 4 + 4):
                sink.write({"__key__": names[j], "jpg": images[j], "cls": labels[j]})
    (root / "shards" / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def _by_content(paths: list[Path], targets: list[int], classes: list[str]) -> dict[str, str]:
    return {hashlib.sha256(read_regular_file(p)).hexdigest(): classes[t] for p, t in zip(paths, targets)}


@pytest.mark.parametrize("source", ["saved", "parquet", "parquet/set.parquet", "parquet/*.parquet", "shards",
                                    "shards/set-{000000..000001}.tar", "shards/*.tar"])
def test_every_format_gives_the_images_and_labels_of_the_folders(stored: Path, source: str) -> None:
    folder = scan_dataset(stored / "folder")
    records = scan_dataset(str(stored / source))
    assert records.classes == CLASSES
    assert len(records) == 8 and not records.skipped
    assert _by_content(records.paths, records.targets, records.classes) == _by_content(
        folder.paths, folder.targets, folder.classes)


def test_records_are_named_by_their_container_and_key(stored: Path) -> None:
    assert str(scan_dataset(stored / "shards").paths[0]) == f"{stored}/shards/set-000000.tar#cat_0"
    assert str(scan_dataset(stored / "saved").paths[3]) == f"{stored}/saved#3"
    assert str(scan_dataset(stored / "parquet").paths[5]) == f"{stored}/parquet/set.parquet#5"
    assert str(scan_dataset(stored / "splits", split="val").paths[1]) == f"{stored}/splits/validation#1"


def test_a_record_is_read_by_a_process_that_never_scanned_it(stored: Path) -> None:
    """What a bench worker does: it gets record names and opens their containers itself."""
    names = [f"{stored}/shards/set-000001.tar#coffee_2", f"{stored}/saved#6", f"{stored}/parquet/set.parquet#6"]
    code = ("import hashlib, sys; from cnnlab.imagedata.decode import read_regular_file; "
            "print(*[hashlib.sha256(read_regular_file(p)).hexdigest() for p in sys.argv[1:]])")
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, check=True).stdout
    expected = hashlib.sha256((stored / "folder" / "coffee" / "2.jpg").read_bytes()).hexdigest()
    assert out.split() == [expected] * 3


def test_splits_map_to_the_dataset_splits(stored: Path) -> None:
    assert len(scan_dataset(stored / "splits", split="train")) == 8
    assert len(scan_dataset(stored / "splits", split="val")) == 4
    assert len(scan_dataset(stored / "splits", split="validation")) == 4
    with pytest.raises(DatasetError, match="has splits train, validation: choose one"):
        scan_dataset(stored / "splits")
    with pytest.raises(DatasetError, match="no split 'test'"):
        scan_dataset(stored / "splits", split="test")
    with pytest.raises(DatasetError, match=r"2 of 4 shards are missing \(e.g. .*set-000002.tar\)"):
        scan_dataset(str(stored / "shards" / "set-{000000..000003}.tar"))


def test_columns_are_found_from_the_features_or_named(tmp_path: Path, stored: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnlab.imagedata.records import IMAGE_COLUMNS_ENV

    monkeypatch.delenv(IMAGE_COLUMNS_ENV, raising=False)  # the scan below sets it; restored afterwards
    photos = _photos()
    rows = {"picture": [{"bytes": b, "path": None} for b in photos["cat"] + photos["coffee"]],
            "thumb": [{"bytes": b, "path": None} for b in photos["coffee"] + photos["cat"]],
            "kind": ["kitty"] * 4 + ["cup"] * 4}
    features = datasets.Features({"picture": datasets.Image(), "thumb": datasets.Image(), "kind": datasets.Value("string")})
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "named.parquet"))
    with pytest.raises(DatasetError, match="no label column found among picture, thumb, kind"):
        scan_dataset(tmp_path / "named.parquet")
    found = scan_dataset(tmp_path / "named.parquet", image_column="thumb", label_column="kind")
    assert found.classes == ["cup", "kitty"]
    assert _by_content(found.paths, found.targets, found.classes)[
        hashlib.sha256(photos["coffee"][0]).hexdigest()] == "kitty"
    # a process started from this one (a bench worker) reads the named column too
    code = "import sys; from cnnlab.imagedata.decode import read_regular_file; print(len(read_regular_file(sys.argv[1])))"
    out = subprocess.run([sys.executable, "-c", code, str(found.paths[0])], capture_output=True, text=True, check=True)
    assert int(out.stdout) == len(photos["coffee"][0])
    with pytest.raises(DatasetError, match="has no column 'photo'"):
        scan_dataset(tmp_path / "named.parquet", image_column="photo", label_column="kind")
    with pytest.raises(DatasetError, match="image and label columns apply to"):
        scan_dataset(stored / "folder", label_column="kind")


def test_rows_without_an_image_are_skipped_and_rows_naming_a_file_read_it(tmp_path: Path) -> None:
    photos = _photos()
    on_disk = tmp_path / "beside.jpg"
    on_disk.write_bytes(photos["coffee"][3])
    rows = {"image": [{"bytes": photos["cat"][0], "path": None}, None, {"bytes": None, "path": str(on_disk)}],
            "label": [0, 1, 1]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "saved"))
    found = scan_dataset(tmp_path / "saved")
    assert [str(p) for p in found.paths] == [f"{tmp_path}/saved#0", f"{tmp_path}/saved#2"]
    assert [(s.path, s.reason) for s in found.skipped] == [(f"{tmp_path}/saved#1", "empty")]
    assert read_regular_file(found.paths[1]) == photos["coffee"][3]


def test_shard_labels_from_json_members_and_class_names(tmp_path: Path) -> None:
    photos = _photos()
    with wds.TarWriter(str(tmp_path / "a.tar")) as sink:
        sink.write({"__key__": "one", "png": photos["cat"][0], "json": {"label": "tabby", "url": "x"}})
        sink.write({"__key__": "two", "jpeg": photos["coffee"][0], "json": {"class": "espresso"}})
        sink.write({"__key__": "three", "webp": photos["cat"][1], "cls": "0"})  # a class index, no names given
        sink.write({"__key__": "four", "jpg": photos["cat"][2]})  # no label at all
    with pytest.raises(DatasetError, match=r"some labels are class names, others class indices \(.*a.tar#one is "
                                           r"'tabby', .*a.tar#three is 0\)"):
        scan_dataset(tmp_path / "a.tar")  # names and indices mixed: no names file to relate them
    (tmp_path / "classes.json").write_text(json.dumps({"tabby": 0, "espresso": 1}))
    found = scan_dataset(tmp_path / "a.tar")
    assert found.classes == ["tabby", "espresso"]
    assert [str(p).rsplit("#", 1)[1] for p in found.paths] == ["one", "two", "three"]
    assert found.targets == [0, 1, 0]
    assert [(s.path.rsplit("#", 1)[1], s.reason) for s in found.skipped] == [("four", "missing")]
    # predict takes every image, labelled or not
    assert len(expand_paths([tmp_path / "a.tar"])[0]) == 4


def _hostile_shard(folder: Path) -> Path:
    photos = _photos()
    bomb = io.BytesIO()
    Image.new("1", (12_000, 9_000)).save(bomb, "PNG")  # 108 megapixels in a few kilobytes
    folder.mkdir()
    with wds.TarWriter(str(folder / "hostile-000000.tar")) as sink:
        sink.write({"__key__": "good", "jpg": photos["cat"][0], "cls": 0})
        sink.write({"__key__": "cut", "jpg": photos["cat"][1][: len(photos["cat"][1]) // 2], "cls": 0})
        sink.write({"__key__": "bomb", "png": bomb.getvalue(), "cls": 1})
        sink.write({"__key__": "text", "jpg": b"not an image at all", "cls": 1})
        sink.write({"__key__": "fine", "jpg": photos["coffee"][0], "cls": 1})
    return folder


def test_hostile_members_are_reported_with_their_member_as_path(tmp_path: Path) -> None:
    import cnnlab
    from cnnlab.options import RuntimeOptions

    shards = _hostile_shard(tmp_path / "hostile")
    result = cnnlab.predict([str(shards)], model=OFFLINE_MODEL,
                            runtime=RuntimeOptions(device="cpu", batch_size=4, workers=1))
    tar = shards / "hostile-000000.tar"
    assert sorted((s.path, s.reason) for s in result.skipped) == [
        (f"{tar}#bomb", "decompression-bomb"), (f"{tar}#cut", "truncated"), (f"{tar}#text", "not-an-image")]
    assert [p.path for p in result.predictions] == [f"{tar}#good", f"{tar}#fine"]


def test_predictions_are_identical_for_every_format(stored: Path) -> None:
    import cnnlab
    from cnnlab.options import RuntimeOptions

    def predictions(source: str, workers: int) -> dict[str, list[tuple[int, float]]]:
        runtime = RuntimeOptions(device="cpu", batch_size=3, workers=workers)
        result = cnnlab.predict([source], model=OFFLINE_MODEL, runtime=runtime, auto_backend=False)
        assert not result.skipped and len(result.predictions) == 8
        return {hashlib.sha256(read_regular_file(p.path)).hexdigest(): [(c.index, c.probability) for c in p.top]
                for p in result.predictions}

    folder = predictions(str(stored / "folder"), 0)
    for source, workers in [("saved", 1), ("parquet", 0), ("shards", 1), ("shards/set-{000000..000001}.tar", 0)]:
        assert predictions(str(stored / source), workers) == folder, source


def test_train_uses_the_dataset_splits_or_splits_records_per_class(stored: Path) -> None:
    from cnnlab.train.data import prepare_data

    given = prepare_data(str(stored / "splits"), val_fraction=0.25)
    assert given.classes == CLASSES and len(given.train) == 8 and given.val is not None and len(given.val) == 4
    assert given.source == f"splits of {stored / 'splits'}"
    split = prepare_data(str(stored / "shards"), val_fraction=0.25, seed=3)
    assert split.val is not None and len(split.train) == 6 and sorted(split.val.targets) == [0, 1]
    assert split.fingerprint() == prepare_data(str(stored / "shards"), val_fraction=0.25, seed=3).fingerprint()


runner = CliRunner()


def test_bench_train_and_review_run_on_shards(stored: Path, tmp_path: Path) -> None:
    from cnnlab.cli import app

    shards = str(stored / "shards" / "set-{000000..000001}.tar")
    bench = runner.invoke(app, ["bench", shards, "-m", OFFLINE_MODEL, "-b", "4", "--workers", "1", "--repeats", "3",
                                "--speed-budget", "1", "--no-plots", "-o", str(tmp_path / "b"), "-q"])
    assert bench.exit_code == 0, bench.output  # the model ran in its own process, which opened the shards itself
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results["dataset"]["images"] == 8 and results["dataset"]["classes"] == {"cat": 4, "coffee": 4}
    (predictions,) = (tmp_path / "b" / "predictions").glob("*.csv")
    assert f"{stored}/shards/set-000000.tar#cat_0,cat," in predictions.read_text()
    train = runner.invoke(app, ["train", shards, *SMALL_TRAIN_ARGS, "--epochs", "1", "-o", str(tmp_path / "t"), "-q"])
    assert train.exit_code == 0, train.output
    assert "shards/set-000001.tar#coffee_" in (tmp_path / "t" / "data_split.csv").read_text()
    again = scan_dataset(tmp_path / "t" / "data_split.csv", split="val")  # the run's split, read back as a manifest
    assert len(again) == 2 and not again.skipped and all(read_regular_file(p) for p in again.paths)
    review = runner.invoke(app, ["review", str(stored / "saved"), "--folds", "2", "--no-cache", "-o",
                                 str(tmp_path / "r"), "-q", "--workers", "0"])
    assert review.exit_code == 0, review.output
    assert f"\n{stored}/saved#" in (tmp_path / "r" / "review.csv").read_text()


def test_two_torchrun_processes_score_each_shard_image_once(stored: Path, tmp_path: Path) -> None:
    import csv

    shards = str(stored / "shards" / "set-{000000..000001}.tar")
    cmd = [sys.executable, "-m", "cnnlab", "bench", shards, "-m", OFFLINE_MODEL, "-b", "2", "--workers", "1",
           "--repeats", "3", "--speed-budget", "1", "--no-plots", "-o", str(tmp_path / "b"), "-q", "--nproc", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert '"world_size": 2' in (tmp_path / "b" / "results.json").read_text()
    (predictions,) = (tmp_path / "b" / "predictions").glob("*.csv")
    paths = [row["path"] for row in csv.DictReader(predictions.open())]
    assert sorted(paths) == sorted(str(p) for p in scan_dataset(shards).paths)  # every image, each once


class _Hub:
    """The few Hub API routes ``datasets.load_dataset`` asks for, serving one dataset repository from a folder."""

    repo, sha = "local/tiny", "a" * 40

    def __init__(self, folder: Path) -> None:
        import http.server
        import threading

        hub = self
        self.folder = folder
        self.requests: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                hub.answer(self, body=True)

            def do_HEAD(self) -> None:
                hub.answer(self, body=False)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def files(self) -> list[str]:
        return sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*") if p.is_file())

    def answer(self, handler: Any, *, body: bool) -> None:
        from urllib.parse import unquote, urlparse

        url = urlparse(handler.path)
        path = unquote(url.path)
        self.requests.append(f"{handler.command} {path}")
        api = f"/api/datasets/{self.repo}"
        code, data, kind, extra = 404, b"{}", "application/json", {"X-Error-Code": "EntryNotFound"}
        if path in (api, f"{api}/revision/main", f"{api}/revision/{self.sha}"):
            info = {"id": self.repo, "sha": self.sha, "private": False, "tags": [],
                    "siblings": [{"rfilename": f} for f in self.files()]}
            code, data, extra = 200, json.dumps(info).encode(), {}
        elif path.startswith(f"{api}/tree/{self.sha}"):
            sub = path[len(f"{api}/tree/{self.sha}"):].strip("/")
            items: dict[str, dict[str, Any]] = {}
            for f in self.files():
                if sub and not f.startswith(sub + "/"):
                    continue
                rest = f[len(sub) + 1:] if sub else f
                if "/" in rest:
                    folder = f"{sub}/{rest.split('/')[0]}" if sub else rest.split("/")[0]
                    items[folder] = {"type": "directory", "path": folder, "oid": "0" * 40}
                else:
                    items[f] = {"type": "file", "path": f, "size": (self.folder / f).stat().st_size,
                                "oid": hashlib.sha1(f.encode()).hexdigest()}
            code, data, extra = 200, json.dumps(list(items.values())).encode(), {}
        else:
            for rev in ("main", self.sha):
                prefix = f"/datasets/{self.repo}/resolve/{rev}/"
                if path.startswith(prefix) and (self.folder / path[len(prefix):]).is_file():
                    data = (self.folder / path[len(prefix):]).read_bytes()
                    code, kind = 200, "application/octet-stream"
                    extra = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": self.sha}
        handler.send_response(code)
        handler.send_header("Content-Type", kind)
        handler.send_header("Content-Length", str(len(data)))
        for key, value in extra.items():
            handler.send_header(key, value)
        handler.end_headers()
        if body:
            handler.wfile.write(data)


def test_a_hub_dataset_loads_through_hf_endpoint_and_then_offline(stored: Path, tmp_path: Path) -> None:
    """``hf:NAME/SPLIT`` goes through ``datasets.load_dataset``: HF_ENDPOINT (a local server here),
    HF_DATASETS_CACHE and HF_HUB_OFFLINE are datasets' own, and honoured."""
    import os

    repo = tmp_path / "repo" / "data"
    repo.mkdir(parents=True)
    parquet = (stored / "parquet" / "set.parquet").read_bytes()
    (repo / "train-00000-of-00001.parquet").write_bytes(parquet)
    (repo / "validation-00000-of-00001.parquet").write_bytes(parquet)
    hub = _Hub(tmp_path / "repo")
    code = ("import hashlib, sys; from cnnlab.imagedata.datasets import scan_dataset; "
            "from cnnlab.imagedata.decode import read_regular_file; "
            "found = scan_dataset(sys.argv[1], split=sys.argv[2] if len(sys.argv) > 2 else None); "
            "print(found.classes, found.paths[3], hashlib.sha256(read_regular_file(found.paths[3])).hexdigest())")
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "home"),
           "HF_DATASETS_CACHE": str(tmp_path / "cache"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    expected = hashlib.sha256((stored / "folder" / "cat" / "3.jpg").read_bytes()).hexdigest()
    try:
        online = subprocess.run([sys.executable, "-c", code, f"hf:{hub.repo}", "val"], env=env, capture_output=True,
                                text=True, timeout=300)
    finally:
        hub.server.shutdown()
    assert online.returncode == 0, online.stderr[-3000:]
    assert online.stdout.split() == ["['cat',", "'coffee']", f"hf:{hub.repo}/validation#3", expected]
    assert any(r.endswith("validation-00000-of-00001.parquet") for r in hub.requests)
    assert any((tmp_path / "cache").rglob("*validation*.arrow"))  # HF_DATASETS_CACHE holds the Arrow files
    offline = subprocess.run([sys.executable, "-c", code, f"hf:{hub.repo}/validation"],
                             env=env | {"HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert offline.returncode == 0, offline.stderr[-3000:]  # the server is gone: the cache answers
    assert offline.stdout.split()[-1] == expected


def test_a_class_folder_tree_with_a_stray_archive_or_table_stays_a_class_folder_tree(tmp_path: Path) -> None:
    from cnnlab.imagedata.datasets import scan_dataset
    from cnnlab.imagedata.sources import record_kind
    from tests.helpers.images import make_image

    root = tmp_path / "photos"
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        make_image(root / label / "1.jpg")
    (root / "backup.tar").write_bytes(b"")
    (root / "table.parquet").write_bytes(b"")
    assert record_kind(root) is None
    images = scan_dataset(root)
    assert images.classes == ["cat", "dog"] and len(images) == 2
