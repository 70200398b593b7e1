"""Orchestration of a collect run: candidates -> fetch -> verify -> deduplicate -> store -> manifest.

Workers fetch, verify and write each image to ``OUT/.partial/``; the calling thread decides
duplicates one candidate at a time, appends the manifest line, then renames the file into
``OUT/<class>/`` (see :mod:`cnnlab.collect.resume` for why that order makes runs resumable).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.collect.base import Candidate, CollectError, Engine, PageFetchError, check_label
from cnnlab.collect.config import (
    DEFAULT_MIN_SIZE,
    DEFAULT_NEAR_DUP_THRESHOLD,
    DEFAULT_PER_CLASS,
    DEFAULT_THREADS,
    FetchConfig,
)
from cnnlab.collect.dedup import DedupIndex, KeptImage
from cnnlab.collect.download import Downloader, FetchResult, read_local_file
from cnnlab.collect.engines import make_engine
from cnnlab.collect.manifest import MANIFEST_NAME, FolderLock, Manifest, make_record
from cnnlab.collect.resume import PARTIAL_DIR, ResumeState, clean_partial, restore
from cnnlab.collect.sources import default_query, folder_candidates, group_by_label, load_url_list
from cnnlab.collect.verify import DEFAULT_MAX_ASPECT_RATIO, VerifiedImage, verify_image
from cnnlab.errors import ImageDecodeError, OutputError
from cnnlab.imagedata.decode import DEFAULT_MAX_PIXELS
from cnnlab.progress import Progress

log = logging.getLogger("cnnlab.collect")

#: Per query, how many hits an engine is asked for at most (engines page lazily).
DEFAULT_MAX_HITS_PER_QUERY = 1000


@dataclass
class ClassSummary:
    """Where one class stands after the run (counts cover every run recorded in the manifest)."""

    label: str
    wanted: int
    ok: int = 0
    new: int = 0
    """Images added by this run."""
    found: int = 0
    """Candidates found and decided (one manifest line each), over every run."""
    duplicates: int = 0
    cross_class_duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool:
        return self.ok >= self.wanted

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["met"] = self.met
        return d


@dataclass
class CollectResult:
    """What a collect run did."""

    out: Path
    manifest: Path
    engine: str
    classes: list[ClassSummary]
    elapsed: float
    fetched: int = 0
    """Candidates fetched or read by this run."""
    bytes_downloaded: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every class reached its target."""
        return all(c.met for c in self.classes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "manifest": str(self.manifest),
            "engine": self.engine,
            "complete": self.complete,
            "elapsed_s": round(self.elapsed, 3),
            "fetched": self.fetched,
            "bytes_downloaded": self.bytes_downloaded,
            "classes": [c.to_dict() for c in self.classes],
            "notes": list(self.notes),
        }


@dataclass
class _Outcome:
    fetch: FetchResult
    image: VerifiedImage | None = None
    temp: Path | None = None
    reject: ImageDecodeError | None = None


def collect(
    out: str | Path,
    classes: Sequence[str] = (),
    per_class: int | None = DEFAULT_PER_CLASS,
    *,
    engine: str | Engine = "bing",
    queries: Mapping[str, Sequence[str]] | None = None,
    filters: Mapping[str, str] | None = None,
    urls: str | Path | None = None,
    label: str | None = None,
    from_folder: str | Path | None = None,
    engine_url: str | None = None,
    api_key: str | None = None,
    min_size: int = DEFAULT_MIN_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
    near_dup_threshold: int = DEFAULT_NEAR_DUP_THRESHOLD,
    threads: int = DEFAULT_THREADS,
    fetch: FetchConfig | None = None,
    retry_failed: bool = False,
    max_hits_per_query: int = DEFAULT_MAX_HITS_PER_QUERY,
    progress: Progress | None = None,
) -> CollectResult:
    """Build (or continue building) a labelled image set in ``out``.

    Args:
        out: dataset folder: ``out/<class>/<sha256[:16]>.<ext>`` plus ``out/manifest.jsonl``.
        classes: class names. With a search engine, one query per class (its name) unless
            ``queries`` says otherwise; with ``urls``/``from_folder`` they restrict the classes read.
        per_class: images wanted per class (``None`` with ``urls``/``from_folder``: all of them).
        engine: an engine name (``bing``, ``baidu``, ``flickr``, ``google``, ``ddg``) or object.
        queries: search terms per class, e.g. ``{"cat": ["tabby cat", "house cat"]}``.
        filters: engine filters, e.g. ``{"size": "large", "type": "photo", "license": "creativecommons"}``.
        urls: a URL list (txt + ``label``, or CSV/JSONL with ``url`` and ``label``) instead of an engine.
        label: the class of a plain URL list or of a folder imported as one class.
        from_folder: a folder of images to import instead of an engine.
        engine_url: base URL for the engine (a mirror, or a local server in tests).
        api_key: Flickr API key (default: ``FLICKR_API_KEY`` or ``FLICKR_APIKEY``).
        min_size: images whose shorter side is below this are rejected.
        max_pixels: images with more pixels are rejected as decompression bombs.
        max_aspect_ratio: images whose longer side is more than this many times the shorter are
            rejected (``extreme-aspect-ratio``); ``None`` accepts any shape.
        near_dup_threshold: perceptual-hash distance (bits of 64) at or below which images are
            near duplicates; ``-1`` turns near-duplicate detection off (exact still applies).
        threads: downloads in flight at once (per-host limits are in ``fetch``).
        fetch: timeouts, retries, byte cap, redirects, politeness, robots.txt, and whether private
            hosts may be reached (``allow_private_hosts``; refused by default).
        retry_failed: fetch again URLs whose earlier attempt ``failed`` (network/server errors).
        max_hits_per_query: stop asking an engine for more after this many hits per query.
        progress: hooks for a progress display.

    Raises:
        CollectError: bad options or inputs (``out`` is a file, a class name too long for a folder
            name), or another collect holds the folder.
        OutputError: the dataset folder cannot be written (no permission, disk full). What was
            saved before stays, recorded in the manifest: the same call continues the run.
    """
    started = time.monotonic()
    out = Path(out)
    fetch = fetch or FetchConfig()
    progress = progress or Progress()
    if threads < 1:
        raise CollectError("threads must be at least 1")
    if per_class is not None and per_class < 0:
        raise CollectError("per_class must be >= 0")

    plan, engine_obj, engine_name = _plan(
        classes, per_class, engine, queries, urls, label, from_folder, engine_url, api_key, fetch.timeout
    )
    check = getattr(engine_obj, "check_filters", None)
    if check is not None:
        check(filters or {})  # refuse a bad filter before touching the disk
    elif filters and engine_obj is None:
        raise CollectError(f"filters ({', '.join(filters)}) apply to search engines, not to {engine_name}")

    if out.exists() and not out.is_dir():
        raise CollectError(f"--out {out} is a file; give a folder for the dataset (it is made if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot make the dataset folder {out}: {exc.strerror or exc}") from None
    with _disk_errors(out), FolderLock(out), Manifest(out / MANIFEST_NAME) as manifest, Downloader(fetch) as downloader:
        records = manifest.open()
        dedup = DedupIndex(near_dup_threshold if near_dup_threshold >= 0 else 0)
        near_enabled = near_dup_threshold >= 0
        state = restore(out, records, manifest, dedup, retry_failed)
        run = _Run(
            out=out,
            manifest=manifest,
            downloader=downloader,
            dedup=dedup,
            near_enabled=near_enabled,
            state=state,
            min_size=min_size,
            max_pixels=max_pixels,
            max_aspect_ratio=max_aspect_ratio,
            max_bytes=fetch.max_bytes,
            threads=threads,
            progress=progress,
        )
        result_notes: list[str] = []
        for cls_label, (wanted, source) in plan.items():
            have = state.ok[cls_label]
            progress.start(cls_label, cls_label, total=wanted, completed=min(have, wanted))
            notes: list[str] = []
            if have < wanted:
                if engine_obj is not None:
                    cls_queries = list((queries or {}).get(cls_label) or [default_query(cls_label)])
                    stream = _engine_candidates(
                        engine_obj, cls_label, cls_queries, filters or {}, downloader, max_hits_per_query, notes
                    )
                else:
                    stream = iter(source)
                run.fill(cls_label, wanted, stream)
            for note in notes:
                progress.note(note, warning=True)
            summary = _summarise(cls_label, wanted, manifest.path, run.new[cls_label], notes)
            if not summary.met:
                short = f"{cls_label}: {summary.ok} of {wanted} images"
                summary.notes.append(f"{short} (candidates ran out; see the manifest for why the others were refused)")
            progress.finish(cls_label, _summary_line(summary))
            result_notes.extend(summary.notes)
            run.summaries.append(summary)
        clean_partial(out)
    return CollectResult(
        out=out,
        manifest=out / MANIFEST_NAME,
        engine=engine_name,
        classes=run.summaries,
        elapsed=time.monotonic() - started,
        fetched=run.fetched,
        bytes_downloaded=run.bytes,
        notes=result_notes,
    )


@contextlib.contextmanager
def _disk_errors(out: Path) -> Iterator[None]:
    """Turn an ``OSError`` while writing the dataset (a full disk, lost permissions) into one sentence.

    Nothing else raises ``OSError`` here: the downloader and the file reader turn theirs into results.
    """
    try:
        yield
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise OutputError(
            f"cannot write to {out}: {exc.strerror or exc}{where}. The run stopped; the images saved so far are "
            "complete and in the manifest: fix the cause (free space, permissions) and run the same command "
            "again to continue"
        ) from None


# -- planning ---------------------------------------------------------------------------------


def _plan(
    classes: Sequence[str],
    per_class: int | None,
    engine: str | Engine,
    queries: Mapping[str, Sequence[str]] | None,
    urls: str | Path | None,
    label: str | None,
    from_folder: str | Path | None,
    engine_url: str | None,
    api_key: str | None,
    timeout: float,
) -> tuple[dict[str, tuple[int, list[Candidate]]], Engine | None, str]:
    """Per class: (wanted, fixed candidates); and the engine to search with, if any."""
    wanted_classes = [check_label(c) for c in classes]
    if urls is not None and from_folder is not None:
        raise CollectError("give either --urls or --from-folder, not both")
    name = engine if isinstance(engine, str) else engine.name
    if urls is not None or from_folder is not None or name in ("urls", "folder"):
        if urls is not None:
            found = load_url_list(urls, label)
            name = "urls"
        elif from_folder is not None:
            found = folder_candidates(from_folder, label)
            name = "folder"
        else:
            flag = "--urls FILE" if name == "urls" else "--from-folder DIR"
            raise CollectError(f"--engine {name} needs {flag}")
        groups = group_by_label(found)
        if wanted_classes:
            missing = [c for c in wanted_classes if c not in groups]
            if missing:
                log.warning("no candidates for %s in the %s input", ", ".join(missing), name)
            groups = {c: groups.get(c, []) for c in wanted_classes}
        if not groups:
            raise CollectError(f"the {name} input holds no candidates")
        plan = {c: (len(cands) if per_class is None else per_class, cands) for c, cands in groups.items()}
        return plan, None, name

    labels = wanted_classes or [check_label(c) for c in (queries or {})]
    if not labels:
        raise CollectError("name the classes to collect (--classes cat,dog) or give --query CLASS=terms")
    unknown = [c for c in (queries or {}) if c not in labels]
    if unknown:
        raise CollectError(f"--query names classes not in --classes: {', '.join(unknown)}")
    if per_class is None:
        raise CollectError("--per-class is needed with a search engine")
    if isinstance(engine, str):
        key = api_key or os.environ.get("FLICKR_API_KEY") or os.environ.get("FLICKR_APIKEY")
        engine_obj = make_engine(engine, base_url=engine_url, api_key=key, timeout=timeout)
    else:
        engine_obj = engine
    return {c: (per_class, []) for c in dict.fromkeys(labels)}, engine_obj, engine_obj.name


def _engine_candidates(
    engine: Engine,
    label: str,
    queries: list[str],
    filters: Mapping[str, str],
    downloader: Downloader,
    limit: int,
    notes: list[str],
) -> Iterator[Candidate]:
    """Hits of all queries, interleaved (one from each in turn), as candidates; notes empty/failed searches."""
    active: list[tuple[str, Iterator[Any]]] = [
        (q, iter(engine.search(q, limit=limit, filters=filters, fetch_page=downloader.fetch_page))) for q in queries
    ]
    hits: Counter[str] = Counter()
    try:
        while active:
            for item in list(active):
                query, it = item
                try:
                    hit = next(it)
                except StopIteration:
                    active.remove(item)
                    if not hits[query]:
                        hint = f" ({engine.no_results_hint})" if engine.no_results_hint else ""
                        notes.append(f"{engine.name} returned no results for {query!r}{hint}")
                    continue
                except CollectError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a fetch failure, or an engine broken upstream: say so, go on
                    active.remove(item)
                    what = str(exc) if isinstance(exc, PageFetchError) else f"{type(exc).__name__}: {exc}"
                    got = f" after {hits[query]} results" if hits[query] else ""
                    hint = f" ({engine.no_results_hint})" if engine.no_results_hint and not hits[query] else ""
                    notes.append(f"{engine.name} search for {query!r} failed{got}: {what}{hint}")
                    continue
                hits[query] += 1
                yield Candidate(label, hit.url, engine.name, query, hit.source_page, hit.license)
    finally:
        for _, it in active:
            close = getattr(it, "close", None)
            if close:
                close()


# -- the fetch loop ----------------------------------------------------------------------------


class _Run:
    """Fetches candidates in a thread pool and decides them one at a time in the calling thread."""

    def __init__(
        self,
        *,
        out: Path,
        manifest: Manifest,
        downloader: Downloader,
        dedup: DedupIndex,
        near_enabled: bool,
        state: ResumeState,
        min_size: int,
        max_pixels: int,
        max_aspect_ratio: float | None,
        max_bytes: int,
        threads: int,
        progress: Progress,
    ) -> None:
        self.out = out
        self.partial = out / PARTIAL_DIR
        self.manifest = manifest
        self.downloader = downloader
        self.dedup = dedup
        self.near_enabled = near_enabled
        self.state = state
        self.min_size = min_size
        self.max_pixels = max_pixels
        self.max_aspect_ratio = max_aspect_ratio
        self.max_bytes = max_bytes
        self.threads = threads
        self.progress = progress
        self.tallies: dict[str, Counter[str]] = {}
        self.new: Counter[str] = Counter()
        self.fetched = 0
        self.bytes = 0
        self.summaries: list[ClassSummary] = []
        self._lock = threading.Lock()

    def fill(self, label: str, wanted: int, candidates: Iterator[Candidate]) -> None:
        """Take candidates until ``label`` has ``wanted`` images or candidates run out."""
        done = self.state.done.setdefault(label, set())
        queued: set[str] = set()
        pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix=f"collect-{label}")
        in_flight: dict[Future[_Outcome], Candidate] = {}
        exhausted = False
        try:
            while True:
                while not exhausted and len(in_flight) < self.threads and self.state.ok[label] + len(in_flight) < wanted:
                    cand = next(candidates, None)
                    if cand is None:
                        exhausted = True
                        break
                    if cand.url in done or cand.url in queued:
                        continue
                    queued.add(cand.url)
                    kept = self.state.ok_urls.get(cand.url)
                    if kept is not None and kept.label != label:
                        self._record_same_url(cand, kept)
                        continue
                    in_flight[pool.submit(self._work, cand)] = cand
                if not in_flight:
                    break
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    cand = in_flight.pop(future)
                    self._decide(cand, future.result())
                    done.add(cand.url)
        finally:
            close = getattr(candidates, "close", None)
            if close:
                close()
            pool.shutdown(wait=not in_flight, cancel_futures=True)

    # worker thread
    def _work(self, cand: Candidate) -> _Outcome:
        if cand.local_path:
            fetched = read_local_file(cand.local_path, self.max_bytes)
        else:
            fetched = self.downloader.fetch(cand.url)
        with self._lock:
            self.fetched += 1
            self.bytes += len(fetched.data or b"")
        if not fetched.ok or fetched.data is None:
            return _Outcome(fetched)
        try:
            image = verify_image(fetched.data, min_size=self.min_size, max_pixels=self.max_pixels,
                                 max_aspect_ratio=self.max_aspect_ratio)
        except ImageDecodeError as exc:
            return _Outcome(fetched, reject=exc)
        self.partial.mkdir(parents=True, exist_ok=True)
        temp = self.partial / f"{image.sha256[:16]}-{uuid.uuid4().hex[:12]}.{image.ext}.tmp"
        with temp.open("wb") as fh:
            fh.write(image.data)
            fh.flush()
            os.fsync(fh.fileno())
        return _Outcome(fetched, image, temp)

    # main thread
    def _decide(self, cand: Candidate, outcome: _Outcome) -> None:
        f = outcome.fetch
        base: dict[str, Any] = {
            "class": cand.label,
            "query": cand.query,
            "engine": cand.engine,
            "url": cand.url,
            "source_page": cand.source_page,
            "license": cand.license,
            "final_url": f.final_url if f.final_url and f.final_url != cand.url else None,
            "http_status": f.http_status,
            "attempts": f.attempts,
        }
        image = outcome.image
        if image is None:
            if outcome.reject is not None:
                record = make_record(
                    **base, status="rejected", reason=outcome.reject.reason, detail=outcome.reject.detail,
                    bytes=len(f.data or b""),
                )  # fmt: skip
            else:
                record = make_record(**base, status=f.status, reason=f.reason, detail=f.detail)
            self._emit(cand.label, record)
            return
        assert outcome.temp is not None
        described = {
            "sha256": image.sha256,
            "phash": image.phash,
            "width": image.width,
            "height": image.height,
            "bytes": len(image.data),
            "format": image.format,
            "orientation": image.orientation,
        }
        duplicate = self.dedup.find(image.sha256, image.phash_int, cand.label)
        if duplicate is not None and (duplicate.kind == "exact" or self.near_enabled):
            outcome.temp.unlink(missing_ok=True)
            record = make_record(
                **base, **described, status="duplicate", reason=duplicate.reason(cand.label),
                detail=duplicate.detail(), duplicate_of=duplicate.kept.path,
            )  # fmt: skip
            self._emit(cand.label, record)
            return
        rel = f"{cand.label}/{image.sha256[:16]}.{image.ext}"
        detail = "transcoded to PNG" if image.transcoded else None
        record = make_record(**base, **described, status="ok", path=rel, detail=detail)
        self.manifest.append(record)  # the line first: a crash before the rename is rolled forward
        final = self.out / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(outcome.temp, final)
        kept = KeptImage(cand.label, image.sha256, image.phash_int, rel)
        self.dedup.add(kept)
        self.state.ok_urls.setdefault(cand.url, kept)
        self.state.ok[cand.label] += 1
        self.new[cand.label] += 1
        self._report(cand.label, record)

    def _record_same_url(self, cand: Candidate, kept: KeptImage) -> None:
        record = make_record(
            **{"class": cand.label}, query=cand.query, engine=cand.engine, url=cand.url,
            source_page=cand.source_page, license=cand.license, sha256=kept.sha256,
            phash=f"{kept.phash:016x}", status="duplicate", reason="cross-class-exact-duplicate",
            detail=f"same URL as {kept.path} in class {kept.label!r} (not fetched again)", duplicate_of=kept.path,
        )  # fmt: skip
        self._emit(cand.label, record)
        self.state.done.setdefault(cand.label, set()).add(cand.url)

    def _emit(self, label: str, record: dict[str, Any]) -> None:
        self.manifest.append(record)
        self._report(label, record)

    def _report(self, label: str, record: dict[str, Any]) -> None:
        status = str(record.get("status"))
        tally = self.tallies.setdefault(label, Counter())
        tally[status] += 1
        info = f"dup {tally['duplicate']} · rejected {tally['rejected']} · failed {tally['failed']}"
        self.progress.update(label, completed=self.state.ok[label], info=info)


# -- summaries ---------------------------------------------------------------------------------


def _summary_line(summary: ClassSummary) -> str:
    return (f"{summary.label}: {summary.ok} of {summary.wanted} images ({summary.new} new, "
            f"{summary.duplicates} duplicates, {sum(summary.rejected.values())} rejected, "
            f"{sum(summary.failed.values())} failed)")


def _summarise(label: str, wanted: int, manifest_path: Path, new: int, notes: list[str]) -> ClassSummary:
    from cnnlab.collect.manifest import read_manifest

    last: dict[str, dict[str, Any]] = {}
    for rec in read_manifest(manifest_path):
        if rec.get("class") == label and rec.get("url"):
            last[str(rec["url"])] = rec
    summary = ClassSummary(label=label, wanted=wanted, new=new, notes=list(notes))
    rejected: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    for rec in last.values():
        status = rec.get("status")
        summary.found += 1
        if status == "ok":
            summary.ok += 1
        elif status == "duplicate":
            summary.duplicates += 1
            if str(rec.get("reason", "")).startswith("cross-class"):
                summary.cross_class_duplicates += 1
        elif status == "rejected":
            rejected[str(rec.get("reason"))] += 1
        elif status == "failed":
            failed[str(rec.get("reason"))] += 1
    summary.rejected = dict(sorted(rejected.items()))
    summary.failed = dict(sorted(failed.items()))
    if failed.get("private-address"):
        summary.notes.append(
            f"{label}: {failed['private-address']} URLs lead to private or local addresses and were refused "
            "(SSRF protection); for hosts you own, run again with --allow-private-hosts --retry-failed"
        )
    return summary
