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
from cnnlab.collect import CollectConfig, CollectError, Downloader, FetchConfig, collect_images, read_manifest
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
    assert "127.0.0.1" in results[2].detail and "allow_private_hosts" in results[0].detail
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
    assert cat["failed"] == {"private-address": 1} and "allowing private hosts" in cat["notes"][0]
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
    first = collect_images(CollectConfig(out, urls=urls, label="cat", per_class=None, fetch=config(retries=0), min_size=32))
    assert first.classes[0].failed == {"robots-unreachable": 1}
    web.robots, web.robots_status = None, 200  # the outage is over (no robots.txt: all allowed)
    again = collect_images(CollectConfig(out, urls=urls, label="cat", per_class=None, fetch=config(retries=0), min_size=32,
                    retry_failed=True))
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
    assert "Retry-After" in result.detail and "3,600" in result.detail and "retry_failed" in result.detail


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
    thread = threading.Thread(target=lambda: box.update(result=collect_images(CollectConfig(tmp_path / "d", from_folder=src,
                                                                         per_class=None, min_size=32))), daemon=True)
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
    result = collect_images(CollectConfig(tmp_path / "d", from_folder=src, per_class=None, min_size=32))
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
        result = collect_images(CollectConfig(tmp_path / "d", from_folder=src, per_class=None, min_size=32))
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
    result = collect_images(CollectConfig(out, from_folder=src, per_class=None, min_size=32))
    assert [(c.label, c.ok) for c in result.classes] == [(NON_UTF8, 2)]
    (out / "manifest.jsonl").read_text(encoding="utf-8")  # still valid UTF-8
    assert {r["class"] for r in read_manifest(out / "manifest.jsonl")} == {NON_UTF8}
    assert len(scan_dataset(out)) == 2 and len(scan_dataset(out / "manifest.jsonl")) == 2
    again = collect_images(CollectConfig(out, from_folder=src, per_class=None, min_size=32))  # resumes: nothing new, nothing lost
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
        collect_images(CollectConfig(tmp_path / "d", from_folder=tmp_path / "photos", label="x" * 300, per_class=None))
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
            collect_images(CollectConfig(out, from_folder=src, per_class=None, min_size=32, threads=1))
        result = runner.invoke(app, ["collect", "--from-folder", str(src), "--out", str(tmp_path / "cli"), "-q",
                                     "--threads", "1", "--min-size", "32"])
        assert result.exit_code == 1 and "No space left on device" in result.output, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    done = collect_images(CollectConfig(out, from_folder=src, per_class=None, min_size=32))  # space again: the run completes
    assert done.classes[0].ok == 4 and len(list((out / "cat").iterdir())) == 4


# -- issue 27: one bad item is one row, the crawl goes on -------------------------------------------


def _url_list(tmp_path: Path, urls: list[str]) -> Path:
    path = tmp_path / "urls.txt"
    path.write_text("\n".join(urls) + "\n")
    return path


def _rows(out: Path) -> dict[str, dict[str, Any]]:
    return {str(r["url"]): r for r in read_manifest(out / "manifest.jsonl")}


def test_https_to_a_server_without_tls_is_one_failed_row(web: FakeWeb, tmp_path: Path) -> None:
    """Issue 27, item 1: any TLS failure ended the crawl with AttributeError ('str' has no __cause__): ssl's
    errors carry a string ``reason`` that the SSRF check walked as an exception."""
    web.add("/a.jpg", make_image(1))
    web.add("/b.jpg", make_image(2))
    no_tls = web.url("/a.jpg").replace("http://", "https://")
    out = tmp_path / "d"
    urls = _url_list(tmp_path, [no_tls, web.url("/b.jpg")])
    for _ in range(2):  # and a rerun goes past it too
        result = collect_images(CollectConfig(out, urls=urls, label="cat", per_class=None, min_size=32,
                                              fetch=config(retries=0), retry_failed=True))
        assert (result.classes[0].ok, result.classes[0].failed) == (1, {"tls-error": 1})
    assert _rows(out)[no_tls]["status"] == "failed"


def test_an_untrusted_certificate_is_one_failed_row(web: FakeWeb, tmp_path: Path) -> None:
    """Issue 27, item 1, on a real TLS server on 127.0.0.1 with a self-signed certificate (made here with openssl)."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True, timeout=60)
    tls = FakeWeb()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    tls.server.socket = context.wrap_socket(tls.server.socket, server_side=True)
    tls.add("/a.jpg", make_image(1))
    tls.start()
    try:
        with Downloader(config(retries=0)) as dl:
            result = dl.fetch(tls.url("/a.jpg").replace("http://", "https://"))
    finally:
        tls.stop()
    assert (result.status, result.reason) == ("failed", "tls-error")
    assert "certificate" in result.detail.lower()


@pytest.mark.parametrize("host", ["a..b", "x" * 64 + ".example", ".".join(["abcdefghi"] * 30)])
def test_a_url_whose_host_cannot_be_a_name_is_one_rejected_row(web: FakeWeb, tmp_path: Path, host: str) -> None:
    """Issue 27, item 11: an empty or over-long host label ended the crawl with the IDNA codec's UnicodeError."""
    web.add("/b.jpg", make_image(2))
    bad = f"http://{host}/x.jpg"
    out = tmp_path / "d"
    result = collect_images(CollectConfig(out, urls=_url_list(tmp_path, [bad, web.url("/b.jpg")]), label="cat",
                                          per_class=None, min_size=32, fetch=config(retries=0)))
    assert (result.classes[0].ok, result.classes[0].rejected) == (1, {"bad-url": 1})
    assert "host name" in _rows(out)[bad]["detail"]
    assert not (out / ".partial").exists()  # no leftovers: the run finished


def test_credentials_in_urls_are_used_but_never_stored(web: FakeWeb, tmp_path: Path) -> None:
    """Issue 27 (risk decided): ``http://user:pass@host/x.jpg`` is fetched with its credentials, and the manifest
    records ``http://host/x.jpg``: URL lists may hold them, manifests are shared."""
    web.add("/a.jpg", make_image(1))
    web.add("/loop.jpg", Route(location="/loop.jpg"))
    secret = web.url("/a.jpg").replace("http://", "http://alice:s3cret@")
    looping = web.url("/loop.jpg").replace("http://", "http://alice:s3cret@")
    out = tmp_path / "d"
    urls = tmp_path / "urls.csv"
    urls.write_text(f"url,label,source_page\n{secret},cat,{secret.replace('a.jpg', 'page')}\n{looping},cat,\n")
    for _ in range(2):  # the rerun matches the stored URL: nothing fetched twice
        result = collect_images(CollectConfig(out, urls=urls, per_class=None, min_size=32, fetch=config(retries=0)))
        assert result.classes[0].ok == 1
    manifest = (out / "manifest.jsonl").read_text()
    assert "s3cret" not in manifest and "alice" not in manifest
    assert _rows(out)[web.url("/a.jpg")]["source_page"] == web.url("/page")
    assert web.fetches("/a.jpg") == 1 and web.authorizations and web.authorizations[0].startswith("Basic ")


@pytest.mark.parametrize(
    ("setting", "value"),
    [("timeout", float("inf")), ("timeout", 1e10), ("timeout", float("nan")), ("host_delay", float("inf")),
     ("deadline", float("inf")), ("max_backoff", 1e10)],
)
def test_waits_that_cannot_work_are_refused_before_anything_runs(setting: str, value: float) -> None:
    """Issue 27: ``--timeout inf``/``1e10`` and ``--host-delay inf`` were OverflowError tracebacks mid-crawl."""
    with pytest.raises(CollectError, match=setting.replace("_", " ")):
        FetchConfig(**{setting: value})


@pytest.mark.parametrize(("flag", "value"), [("--timeout", "inf"), ("--timeout", "1e10"), ("--host-delay", "inf")])
def test_collect_cli_refuses_endless_waits_at_once(tmp_path: Path, flag: str, value: str) -> None:
    urls = _url_list(tmp_path, ["http://192.0.2.1/a.jpg"])
    out = tmp_path / "d"
    result = runner.invoke(app, ["collect", "--urls", str(urls), "--label", "cat", "--out", str(out), flag, value])
    assert result.exit_code == 2, result.output
    assert "seconds" in result.output and "Traceback" not in result.output
    assert not out.exists()  # refused before the folder was made


def test_a_photo_with_odd_exif_is_collected(web: FakeWeb, tmp_path: Path) -> None:
    """Issue 27, item 2: an EXIF tag Pillow cannot write back raised struct.error in collect (URL lists and
    --from-folder), and every rerun died at the same file."""
    from tests.helpers.fakeweb import bad_exif_jpeg

    web.add("/odd.jpg", bad_exif_jpeg((96, 64)))
    listed = collect_images(CollectConfig(tmp_path / "u", urls=_url_list(tmp_path, [web.url("/odd.jpg")]), label="cat",
                                          per_class=None, min_size=32, fetch=config(retries=0)))
    folder = tmp_path / "photos" / "cat"
    folder.mkdir(parents=True)
    (folder / "odd.jpg").write_bytes(bad_exif_jpeg((96, 64)))
    imported = collect_images(CollectConfig(tmp_path / "f", from_folder=tmp_path / "photos", per_class=None,
                                            min_size=32))
    for result in (listed, imported):
        assert result.classes[0].ok == 1, result.classes[0]
        (row,) = [r for r in read_manifest(result.manifest) if r["status"] == "ok"]
        assert (row["width"], row["height"], row["orientation"]) == (64, 96, 6)  # upright size, orientation kept
