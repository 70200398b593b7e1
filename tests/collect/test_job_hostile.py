"""collect against hostile servers, inputs and disks: private addresses, outages, slow headers, FIFOs,
full disks, odd names. Each test is the regression test of one defect or decision of issue 14.

Every server here is the fake web on 127.0.0.1; addresses the downloader must refuse are refused
before any connection is made, and the only other address used is the loopback ``[::1]``.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from cnnlab.cli.app import app
from cnnlab.collect import CollectError, Downloader, FetchConfig, collect, read_manifest
from cnnlab.imagedata.datasets import scan_dataset
from tests.helpers.fakeweb import FakeWeb, Route, make_image

runner = CliRunner()
NET = dict(timeout=0.5, deadline=1.0, retries=1, backoff=0.01, per_host=8, host_delay=0.0)
NON_UTF8 = os.fsdecode(b"caf\xe9")


def config(**changes: Any) -> FetchConfig:
    """The tests' fast settings; the fake web is on 127.0.0.1, so private hosts are allowed unless said."""
    return FetchConfig(**{**NET, "allow_private_hosts": True, **changes})


@pytest.fixture
def web() -> Iterator[FakeWeb]:
    server = FakeWeb().start()
    yield server
    server.stop()


# -- SSRF ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("169.254.169.254", "link-local"), ("10.1.2.3", "private"), ("192.168.0.1", "private"),
        ("172.16.0.1", "private"), ("127.0.0.1", "loopback"), ("0.0.0.0", "unspecified"), ("::1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"), ("::ffff:10.0.0.1", "private"), ("fe80::1", "link-local"),
        ("fc00::1", "private"), ("224.0.0.1", "multicast"), ("240.0.0.1", "reserved"), ("100.64.0.1", "non-public"),
        ("2002:a00:1::", "private"), ("64:ff9b::a9fe:a9fe", "link-local"),
        ("fec0::1", "site-local"), ("feff::1", "site-local"), ("::127.0.0.1", "reserved"), ("::ffff:0:7f00:1", "reserved"),
        ("64:ff9b:1::a00:1", "reserved"),
        ("93.184.216.34", None), ("2606:4700::1111", None),
    ],
)
def test_which_addresses_are_refused(address: str, kind: str | None) -> None:
    """Decision (SSRF): private, loopback, link-local, reserved, multicast and unspecified addresses, also embedded in IPv6."""
    from cnnlab.collect.connections import blocked_address_kind

    assert blocked_address_kind(address) == kind


def test_private_hosts_are_refused_in_every_spelling(web: FakeWeb) -> None:
    """Decision (SSRF): 127.0.0.1 as a name, decimal, hex and ::ffff: form is refused before connecting."""
    web.add("/a.jpg", make_image(1))
    port = web.base.rsplit(":", 1)[1]
    spellings = [f"http://{host}:{port}/a.jpg" for host in ("127.0.0.1", "localhost", "2130706433", "0x7f000001",
                                                            "[::ffff:127.0.0.1]")]
    with Downloader(config(allow_private_hosts=False)) as dl:
        results = [dl.fetch(url) for url in spellings]
    assert [(r.status, r.reason) for r in results] == [("failed", "private-address")] * len(spellings)
    assert "127.0.0.1" in results[2].detail and "--allow-private-hosts" in results[0].detail
    assert sum(web.hits.values()) == 0  # not even robots.txt was asked for
    with Downloader(config()) as dl:  # the opt-in, for hosts you own
        assert all(dl.fetch(url).ok for url in spellings)


def test_a_redirect_to_a_private_address_is_refused(web: FakeWeb, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decision (SSRF): every hop is checked on its resolved address (here 127.0.0.1 plays a public host)."""
    from cnnlab.collect import connections

    check = connections.blocked_address_kind
    monkeypatch.setattr(connections, "blocked_address_kind", lambda a: None if a == "127.0.0.1" else check(a))
    port = web.base.rsplit(":", 1)[1]
    web.add("/hop.jpg", Route(location=f"http://[::1]:{port}/inner.jpg"))
    with Downloader(config(allow_private_hosts=False)) as dl:
        result = dl.fetch(web.url("/hop.jpg"))
    assert (result.status, result.reason) == ("failed", "private-address")
    assert "::1" in result.detail and web.fetches("/hop.jpg") == 1


def test_collect_cli_refuses_private_hosts_unless_asked(web: FakeWeb, tmp_path: Path) -> None:
    """Decision (SSRF): `cnnlab collect` refuses them by default; --allow-private-hosts --retry-failed fetches them."""
    web.add("/a.jpg", make_image(1))
    urls = tmp_path / "urls.txt"
    urls.write_text(web.url("/a.jpg") + "\n")
    args = ["collect", "--urls", str(urls), "--label", "cat", "--out", str(tmp_path / "d"), "--json", "-q",
            "--retries", "0", "--min-size", "32", "--host-delay", "0"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 0, refused.output
    (cat,) = json.loads(refused.stdout)["classes"]
    assert cat["failed"] == {"private-address": 1} and "--allow-private-hosts" in cat["notes"][0]
    allowed = runner.invoke(app, [*args, "--allow-private-hosts", "--retry-failed"])
    assert json.loads(allowed.stdout)["classes"][0]["ok"] == 1


# -- defect 3: an outage stays retryable ---------------------------------------------------------


def test_unreachable_robots_txt_stays_retryable(web: FakeWeb, tmp_path: Path) -> None:
    """Defect 3: a robots.txt outage marked the host's URLs `rejected` for ever, even for --retry-failed."""
    web.robots, web.robots_status = "", 503
    web.add("/a.jpg", make_image(1))
    urls = tmp_path / "u.txt"
    urls.write_text(web.url("/a.jpg") + "\n")
    out = tmp_path / "d"
    first = collect(out, urls=urls, label="cat", per_class=None, fetch=config(retries=0), min_size=32)
    assert first.classes[0].failed == {"robots-unreachable": 1}
    web.robots, web.robots_status = None, 200  # the outage is over (no robots.txt: all allowed)
    again = collect(out, urls=urls, label="cat", per_class=None, fetch=config(retries=0), min_size=32,
                    retry_failed=True)
    assert again.classes[0].ok == 1


# -- defect 4: one deadline for the whole request --------------------------------------------------


def test_a_server_that_drips_its_headers_is_cut_at_the_deadline(web: FakeWeb) -> None:
    """Defect 4: the deadline covered only the body; slow headers held a URL for 41 s."""
    web.add("/slow-head.jpg", Route(body=make_image(1), header_drip=0.1))  # headers alone: ~7 s
    started = time.monotonic()
    with Downloader(config(retries=0)) as dl:
        result = dl.fetch(web.url("/slow-head.jpg"))
    elapsed = time.monotonic() - started
    assert (result.status, result.reason) == ("failed", "too-slow")
    assert elapsed < 2.0, elapsed


def test_the_deadline_spans_every_redirect_hop(web: FakeWeb) -> None:
    """Defect 4: one deadline per attempt, not one per hop."""
    for i in range(4):
        web.add(f"/r{i}", Route(location=f"/r{i + 1}", delay=0.6))  # each hop alone is well within 1 s
    web.add("/r4", make_image(1))
    started = time.monotonic()
    with Downloader(config(retries=0, timeout=2.0)) as dl:
        result = dl.fetch(web.url("/r0"))
    assert (result.status, result.reason) == ("failed", "too-slow")
    assert time.monotonic() - started < 1.6


# -- Retry-After far in the future ---------------------------------------------------------------


def test_retry_after_beyond_the_cap_is_not_waited_for(web: FakeWeb) -> None:
    """Decision: Retry-After: 3600 is not slept (not even up to the cap): failed now, said so, retried by a later run."""
    web.add("/busy.jpg", Route(status=503, body=b"busy", content_type="text/plain", headers={"Retry-After": "3600"}))
    started = time.monotonic()
    with Downloader(config(retries=2, max_backoff=2.0)) as dl:
        result = dl.fetch(web.url("/busy.jpg"))
    assert time.monotonic() - started < 1.0
    assert (result.status, result.reason, result.attempts) == ("failed", "http-503", 1)
    assert "Retry-After" in result.detail and "3,600" in result.detail and "--retry-failed" in result.detail


# -- defect 9: special files in a folder import ----------------------------------------------------


def test_folder_import_skips_fifos_and_self_links(tmp_path: Path) -> None:
    """Defects 9 and 13: a FIFO hung the import; a file link to itself crashed it (RuntimeError: symlink loop)."""
    src = tmp_path / "photos"
    (src / "cat").mkdir(parents=True)
    (src / "cat" / "1.jpg").write_bytes(make_image(1))
    fifo = src / "cat" / "pipe.jpg"
    os.mkfifo(fifo)
    (src / "cat" / "self.jpg").symlink_to("self.jpg")
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(result=collect(tmp_path / "d", from_folder=src,
                                                                         per_class=None, min_size=32)), daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        for _ in range(50):
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(0.2)
        pytest.fail("collect blocked on a FIFO")
    (cat,) = box["result"].classes
    assert cat.ok == 1
    assert cat.rejected == {"not-a-file": 1} and cat.failed == {"symlink-loop": 1}


# -- defect 10: camera names -----------------------------------------------------------------------


def test_folder_import_keeps_camera_names(tmp_path: Path) -> None:
    """Defect 10: _DSC0001.JPG was skipped by the folder import too."""
    src = tmp_path / "photos"
    (src / "cat").mkdir(parents=True)
    (src / "cat" / "_DSC0001.JPG").write_bytes(make_image(1))
    (src / "cat" / "_MG_1234.jpg").write_bytes(make_image(2))
    (src / "cat" / ".DS_Store").write_bytes(b"junk")
    (src / "cat" / "Thumbs.db").write_bytes(b"junk")
    result = collect(tmp_path / "d", from_folder=src, per_class=None, min_size=32)
    assert (result.classes[0].ok, result.classes[0].found) == (2, 2)


def test_folder_import_reports_an_unreadable_subfolder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Decision: a folder that cannot be read is a warning, not silence (root ignores modes: simulated)."""
    src = tmp_path / "photos"
    (src / "cat" / "locked").mkdir(parents=True)
    (src / "cat" / "1.jpg").write_bytes(make_image(1))
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:
        if isinstance(path, (str, os.PathLike)) and Path(path).name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level("WARNING", logger="cnnlab.collect"):
        result = collect(tmp_path / "d", from_folder=src, per_class=None, min_size=32)
    assert result.classes[0].ok == 1
    assert any("locked" in r.getMessage() and "Permission denied" in r.getMessage() for r in caplog.records)


# -- defect 2: collect refuses strips --------------------------------------------------------------


def test_collect_refuses_extreme_aspect_ratios(tmp_path: Path) -> None:
    """Defect 2: a 20000x1 image is no training image; collect refuses it (even with --min-size 1)."""
    from cnnlab.collect.verify import verify_image
    from cnnlab.errors import ImageDecodeError

    buf = io.BytesIO()
    Image.new("L", (20000, 1), 100).save(buf, "PNG")
    with pytest.raises(ImageDecodeError) as info:
        verify_image(buf.getvalue(), min_size=1)
    assert info.value.reason == "extreme-aspect-ratio"
    panorama = io.BytesIO()
    Image.new("RGB", (800, 100), (1, 2, 3)).save(panorama, "PNG")
    assert verify_image(panorama.getvalue(), min_size=1).width == 800


# -- defect 5: names that are not UTF-8 ------------------------------------------------------------


def test_folder_import_with_non_utf8_names(tmp_path: Path) -> None:
    """Defect 5: collect died with UnicodeEncodeError on a class or file name that is not UTF-8."""
    src = tmp_path / "photos"
    (src / NON_UTF8).mkdir(parents=True)
    (src / NON_UTF8 / f"{NON_UTF8}.jpg").write_bytes(make_image(1))
    (src / NON_UTF8 / "2.jpg").write_bytes(make_image(2))
    out = tmp_path / "d"
    result = collect(out, from_folder=src, per_class=None, min_size=32)
    assert [(c.label, c.ok) for c in result.classes] == [(NON_UTF8, 2)]
    (out / "manifest.jsonl").read_text(encoding="utf-8")  # still valid UTF-8
    assert {r["class"] for r in read_manifest(out / "manifest.jsonl")} == {NON_UTF8}
    assert len(scan_dataset(out)) == 2 and len(scan_dataset(out / "manifest.jsonl")) == 2
    again = collect(out, from_folder=src, per_class=None, min_size=32)  # resumes: nothing new, nothing lost
    assert (again.classes[0].ok, again.classes[0].new, again.fetched) == (2, 0, 0)


# -- defect 13: environment errors -----------------------------------------------------------------


def test_collect_out_that_is_a_file(tmp_path: Path) -> None:
    """Defect 13: `collect --out FILE` was a FileExistsError traceback."""
    (tmp_path / "photos" / "cat").mkdir(parents=True)
    (tmp_path / "photos" / "cat" / "1.jpg").write_bytes(make_image(1))
    target = tmp_path / "file"
    target.write_text("x")
    result = runner.invoke(app, ["collect", "--from-folder", str(tmp_path / "photos"), "--out", str(target), "-q"])
    assert result.exit_code == 2 and "is a file" in result.output, result.output
    assert target.read_text() == "x"


def test_a_class_name_too_long_for_a_folder(tmp_path: Path) -> None:
    """Defect 13: a class name over the file-system limit was an OSError traceback after downloading."""
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "1.jpg").write_bytes(make_image(1))
    with pytest.raises(CollectError, match="at most 255 bytes"):
        collect(tmp_path / "d", from_folder=tmp_path / "photos", label="x" * 300, per_class=None)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("where", ["image", "manifest"])
def test_a_full_disk_stops_collect_with_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Defect 13: a full disk during collect was a traceback; now one sentence, exit 1, and the run resumes."""
    from cnnlab.collect.manifest import Manifest
    from cnnlab.errors import OutputError

    src = tmp_path / "photos"
    (src / "cat").mkdir(parents=True)
    for i in range(4):
        (src / "cat" / f"{i}.jpg").write_bytes(make_image(i))
    out = tmp_path / "d"

    def full(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    real_append = Manifest.append
    appended: list[int] = []

    def append_then_fill(self: Manifest, record: Any) -> None:
        appended.append(1)
        if len(appended) > 2:
            full()
        real_append(self, record)

    with monkeypatch.context() as patch:
        if where == "image":
            patch.setattr(os, "fsync", full)
        else:
            patch.setattr(Manifest, "append", append_then_fill)
        with pytest.raises(OutputError, match="No space left on device.*run the same command again"):
            collect(out, from_folder=src, per_class=None, min_size=32, threads=1)
        result = runner.invoke(app, ["collect", "--from-folder", str(src), "--out", str(tmp_path / "cli"), "-q",
                                     "--threads", "1", "--min-size", "32"])
        assert result.exit_code == 1 and "No space left on device" in result.output, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    done = collect(out, from_folder=src, per_class=None, min_size=32)  # space again: the run completes
    assert done.classes[0].ok == 4 and len(list((out / "cat").iterdir())) == 4
