"""Resume after `kill -9`: a real `cnnlab collect` subprocess is killed mid-run, then run again."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cnnlab.collect import read_manifest
from tests.helpers.fakeweb import FakeWeb, Route, make_image

PER_CLASS = 8


def _command(web: FakeWeb, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "cnnlab", "collect", "--classes", "cat,dog", "--per-class", str(PER_CLASS),
        "--engine", "bing", "--engine-url", web.base, "--out", str(out), "--threads", "2", "--per-host", "4",
        "--host-delay", "0", "--timeout", "2", "--retries", "0", "--min-size", "32", "--quiet", "--json",
        "--allow-private-hosts",
    ]  # fmt: skip


def _ok_lines(out: Path) -> list[dict]:
    return [r for r in read_manifest(out / "manifest.jsonl") if r["status"] == "ok"]


def _dataset_files(out: Path) -> list[Path]:
    return [p for label in ("cat", "dog") if (out / label).is_dir() for p in (out / label).iterdir()]


def test_kill_9_mid_run_then_resume(tmp_path: Path) -> None:
    web = FakeWeb().start()
    try:
        for label, offset in (("cat", 0), ("dog", 100)):
            paths = []
            for i in range(PER_CLASS + 4):
                path = f"/img/{label}/{i}.jpg"
                web.add(path, Route(body=make_image(offset + i), delay=0.1))
                paths.append(path)
            web.add_results(label, paths)
        out = tmp_path / "data"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(_command(web, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + 60
        while len(_ok_lines(out)) < 5 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.kill()  # SIGKILL: no cleanup of any kind
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()

        before = {r["url"].removeprefix(web.base) for r in _ok_lines(out)}
        assert 5 <= len(before) < 2 * PER_CLASS
        for f in _dataset_files(out):  # whatever is in the dataset is whole
            assert f.name.startswith(hashlib.sha256(f.read_bytes()).hexdigest()[:16])
        hits_before = dict(web.hits)

        done = subprocess.run(_command(web, out), capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert summary["complete"] is True
        assert [(c["label"], c["ok"]) for c in summary["classes"]] == [("cat", PER_CLASS), ("dog", PER_CLASS)]

        for path in before:  # nothing downloaded before the kill is fetched again
            assert web.hits[path] == hits_before[path] == 1, path
        files = _dataset_files(out)
        assert len(files) == 2 * PER_CLASS
        digests = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
        assert len(set(digests)) == len(digests)
        assert all(f.name.startswith(d[:16]) for f, d in zip(files, digests))
        ok = _ok_lines(out)
        assert len(ok) == 2 * PER_CLASS and len({r["url"] for r in ok}) == len(ok)
        assert not (out / ".partial").exists()
    finally:
        web.stop()


def test_quarantined_images_stay_out_of_scans_and_resumes(tmp_path: Path) -> None:
    """After `cnnlab review --apply`, the manifest's last line about a file says `quarantined-...`: the set
    read from manifest.jsonl leaves it out (it is not "missing"), and a resumed crawl treats the same bytes
    from another URL as a duplicate."""
    from cnnlab.collect.dedup import DedupIndex
    from cnnlab.collect.manifest import Manifest, make_record
    from cnnlab.collect.resume import restore
    from cnnlab.imagedata.datasets import scan_dataset

    out = tmp_path / "data"
    (out / "cat").mkdir(parents=True)
    kept_bytes, moved_bytes = make_image(1), make_image(2)
    (out / "cat" / "a.jpg").write_bytes(kept_bytes)
    sha = hashlib.sha256(moved_bytes).hexdigest()
    lines = [make_record(**{"class": "cat"}, url="http://x/a.jpg", status="ok", path="cat/a.jpg",
                         sha256=hashlib.sha256(kept_bytes).hexdigest(), phash="0" * 16),
             make_record(**{"class": "cat"}, url="http://x/b.jpg", status="ok", path="cat/b.jpg", sha256=sha,
                         phash="f" * 16),
             make_record(**{"class": "cat"}, url="http://x/b.jpg", status="rejected", reason="quarantined-offtopic",
                         path="cat/b.jpg", sha256=sha, phash="f" * 16)]
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    data = scan_dataset(out / "manifest.jsonl")
    assert [p.name for p in data.paths] == ["a.jpg"] and data.skipped == []
    dedup = DedupIndex(4)
    with Manifest(out / "manifest.jsonl") as manifest:
        restore(out, manifest.open(), manifest, dedup, retry_failed=False)
    match = dedup.find(sha, int("f" * 16, 16), "cat")
    assert match is not None and "quarantined" in match.kept.path


def test_a_crafted_manifest_cannot_make_a_resume_write_outside_the_folder(tmp_path: Path) -> None:
    """Regression: an ``ok`` line with an absolute path (or ``../x``) and a matching ``.partial`` file made the
    next collect into that folder create the file there (any path the user may write that does not exist yet);
    an existing file outside was counted as a kept image."""
    from typer.testing import CliRunner

    from cnnlab.cli.app import app

    out = tmp_path / "downloaded"
    (out / ".partial").mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    absolute = tmp_path / "absolute.txt"
    payload = b"attacker bytes"
    sha = hashlib.sha256(payload).hexdigest()
    (out / ".partial" / f"{sha[:16]}-1.tmp").write_bytes(payload)
    lines = [{"class": "cat", "url": "http://x/1.jpg", "status": "ok", "path": "../victim.txt", "sha256": sha},
             {"class": "cat", "url": "http://x/2.jpg", "status": "ok", "path": str(absolute), "sha256": sha}]
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    source = tmp_path / "photos"
    source.mkdir()
    (source / "a.png").write_bytes(make_image(3))
    result = CliRunner().invoke(app, ["collect", "--from-folder", str(source), "--label", "cat", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "mine" and not absolute.exists()
    reasons = {r["url"]: r.get("detail", "") for r in read_manifest(out / "manifest.jsonl") if r.get("reason") == "removed"}
    assert "outside" in reasons["http://x/1.jpg"] and "outside" in reasons["http://x/2.jpg"]
