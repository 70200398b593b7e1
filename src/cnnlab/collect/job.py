"""Orchestration of a collect run: candidates -> fetch -> verify -> deduplicate -> store -> manifest.

Workers fetch, verify and write each image to ``OUT/.partial/``; the calling thread decides
duplicates one candidate at a time, appends the manifest line, then renames the file into
``OUT/<class>/`` (see :mod:`cnnlab.collect.resume` for why that order makes runs resumable), or,
for a set written as shards, into the journal and the shard being written (:mod:`cnnlab.collect.shards`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.collect.base import Candidate, CollectError, Engine, PageFetchError
from cnnlab.collect.config import CollectConfig, OutputFormat
from cnnlab.collect.dedup import DedupIndex, KeptImage
from cnnlab.collect.download import Downloader, FetchResult, read_local_file
from cnnlab.collect.engines import make_engine
from cnnlab.collect.manifest import MANIFEST_NAME, FolderLock, Manifest, make_record
from cnnlab.collect.resume import PARTIAL_DIR, ResumeState, clean_partial, restore
from cnnlab.collect.shards import ShardStore, check_same_format, require_writer
from cnnlab.collect.sources import default_query, folder_candidates, group_by_label, load_url_list
from cnnlab.collect.verify import VerifiedImage, verify_image
from cnnlab.errors import ImageDecodeError, OutputError
from cnnlab.options import EngineName
from cnnlab.progress import Progress

log = logging.getLogger("cnnlab.collect")


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
    format: str = OutputFormat.FILES.value
    """How the set is stored: ``files``, ``webdataset`` or ``parquet``."""
    shards: list[Path] = field(default_factory=list)
    """The shards this run completed (none for ``files``)."""

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
            "format": self.format,
            "shards": [str(p) for p in self.shards],
        }


@dataclass
class _Outcome:
    fetch: FetchResult
    image: VerifiedImage | None = None
    temp: Path | None = None
    reject: ImageDecodeError | None = None


def run(config: CollectConfig, *, progress: Progress | None = None) -> CollectResult:
    """Build (or continue building) the labelled image set ``config.out``: check -> lock -> compute -> write.

    The output folder is a dataset (class folders and ``manifest.jsonl``), not a run's report: it is
    made if missing, and a folder holding an earlier collect is continued, not refused (rerunning
    the same call resumes). One collect at a time holds it (a :class:`~cnnlab.outputs.FolderLock`).
    Every candidate ends as one manifest line, ``ok``, ``duplicate``, ``rejected`` or ``failed``,
    whatever its server or bytes do: one bad item never ends the run.

    Raises:
        CollectError: bad settings or inputs (``out`` is a file, a class name too long for a folder
            name, an unreadable URL list), or another collect holds the folder.
        OutputError: the dataset folder cannot be written (no permission, disk full). What was
            saved before stays, recorded in the manifest: the same call continues the run.
    """
    started = time.monotonic()
    out = config.out
    fetch = config.fetch
    progress = progress or Progress()
    rejected_rows: list[str] = []
    plan, engine_obj = _plan(config, rejected_rows)
    check = getattr(engine_obj, "check_filters", None)
    if check is not None:
        check(config.filters)  # refuse a bad filter before touching the disk
    elif config.filters and engine_obj is None:
        raise CollectError(f"filters ({', '.join(config.filters)}) apply to search engines, not to {config.engine_name}")

    require_writer(config.format)
    if out.exists() and not out.is_dir():
        raise CollectError(f"output folder {out} is a file; give a folder for the dataset (it is made if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot make the dataset folder {out}: {exc.strerror or exc}") from None
    near_dup_threshold = config.near_dup_threshold
    with _disk_errors(out), FolderLock(out), Manifest(out / MANIFEST_NAME) as manifest, Downloader(fetch) as downloader:
        records = manifest.open()
        check_same_format(out, records, config.format)
        store = None
        if config.format is not OutputFormat.FILES:
            store = ShardStore(out, config.format, config.shard_size, manifest)
            store.open(list(plan))
        dedup = DedupIndex(near_dup_threshold if near_dup_threshold >= 0 else 0)
        result_notes: list[str] = ([f"{len(rejected_rows)} rows of the URL list left out (bad class names), e.g. "
                                     f"{rejected_rows[0]}"] if rejected_rows else [])
        try:
            state = restore(out, records, manifest, dedup, config.retry_failed, store)
            job = _Run(
                out=out,
                manifest=manifest,
                downloader=downloader,
                dedup=dedup,
                near_enabled=near_dup_threshold >= 0,
                state=state,
                min_size=config.min_size,
                max_pixels=config.max_pixels,
                max_aspect_ratio=config.max_aspect_ratio,
                max_bytes=fetch.max_bytes,
                threads=config.threads,
                progress=progress,
                store=store,
            )
            _fill_classes(job, plan, engine_obj, config, result_notes)
        except BaseException:
            if store is not None:
                store.abandon()  # its images stay in the journal: the next run completes the shard
            raise
        if store is not None:
            store.finish()
        clean_partial(out)
    return CollectResult(
        out=out,
        manifest=out / MANIFEST_NAME,
        engine=engine_obj.name if engine_obj is not None else config.engine_name,
        classes=job.summaries,
        elapsed=time.monotonic() - started,
        fetched=job.fetched,
        bytes_downloaded=job.bytes,
        notes=result_notes,
        format=config.format.value,
        shards=list(store.sealed_this_run) if store is not None else [],
    )


#: The public name of :func:`run`: ``cnnlab.collect_images(config)``.
collect_images = run


def _fill_classes(
    job: _Run,
    plan: dict[str, tuple[int, list[Candidate]]],
    engine_obj: Engine | None,
    config: CollectConfig,
    result_notes: list[str],
) -> None:
    """Every class of the plan in turn, filled up to its target; a summary per class."""
    progress, state, manifest, downloader = job.progress, job.state, job.manifest, job.downloader
    for cls_label, (wanted, source) in plan.items():
        have = state.ok[cls_label]
        progress.start(cls_label, cls_label, total=wanted, completed=min(have, wanted))
        notes: list[str] = []
        if have < wanted:
            if engine_obj is not None:
                cls_queries = list(config.queries.get(cls_label) or [default_query(cls_label)])
                stream = _engine_candidates(
                    engine_obj, cls_label, cls_queries, config.filters, downloader, config.max_hits_per_query, notes
                )
            else:
                stream = iter(source)
            job.fill(cls_label, wanted, stream)
        if job.store is not None:
            job.store.flush()  # every line written before the manifest is read for the summary
        for note in notes:
            progress.note(note, warning=True)
        summary = _summarise(cls_label, wanted, manifest.path, job.new[cls_label], notes)
        if not summary.met:
            short = f"{cls_label}: {summary.ok} of {wanted} images"
            summary.notes.append(f"{short} (candidates ran out; see the manifest for why the others were refused)")
        progress.finish(cls_label, _summary_line(summary))
        result_notes.extend(summary.notes)
        job.summaries.append(summary)


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


def _plan(config: CollectConfig, rejected_rows: list[str]) -> tuple[dict[str, tuple[int, list[Candidate]]], Engine | None]:
    """Per class: (wanted, fixed candidates); and the engine to search with, if any. Rows of a URL list that
    cannot be used are left out and said in ``rejected_rows``."""
    wanted_classes = list(config.classes)
    per_class = config.per_class
    name = config.engine_name
    if name in (EngineName.URLS, EngineName.FOLDER):
        if config.urls is not None:
            found = load_url_list(config.urls, config.label, rejected=rejected_rows)
            if rejected_rows:
                log.warning("%d rows of %s left out: %s%s", len(rejected_rows), config.urls,
                            "; ".join(rejected_rows[:3]), "; ..." if len(rejected_rows) > 3 else "")
        elif config.from_folder is not None:
            found = folder_candidates(config.from_folder, config.label)
        else:
            needs = "a URL list (urls)" if name == EngineName.URLS else "a folder (from_folder)"
            raise CollectError(f"engine {name} needs {needs}")
        groups = group_by_label(found)
        if wanted_classes:
            missing = [c for c in wanted_classes if c not in groups]
            if missing:
                log.warning("no candidates for %s in the %s input", ", ".join(missing), name)
            groups = {c: groups.get(c, []) for c in wanted_classes}
        if not groups:
            raise CollectError(f"the {name} input holds no candidates"
                               + (f" ({len(rejected_rows)} rows left out: {rejected_rows[0]})" if rejected_rows else ""))
        plan = {c: (len(cands) if per_class is None else per_class, cands) for c, cands in groups.items()}
        return plan, None

    labels = wanted_classes or list(config.queries)
    if not labels:
        raise CollectError("name the classes to collect (classes), or give search terms per class (queries)")
    unknown = [c for c in config.queries if c not in labels]
    if unknown:
        raise CollectError(f"queries name classes that are not among the classes: {', '.join(unknown)}")
    if per_class is None:
        raise CollectError("a search engine needs a number of images per class (per_class)")
    if isinstance(config.engine, EngineName):
        key = config.api_key or os.environ.get("FLICKR_API_KEY") or os.environ.get("FLICKR_APIKEY")
        engine_obj = make_engine(config.engine.value, base_url=config.engine_url, api_key=key,
                                 timeout=config.fetch.timeout)
    else:
        engine_obj = config.engine
    return {c: (per_class, []) for c in dict.fromkeys(labels)}, engine_obj


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
                yield Candidate.from_url(label, hit.url, engine.name, query, hit.source_page, hit.license)
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
        store: ShardStore | None = None,
    ) -> None:
        self.out = out
        self.store = store
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
        try:
            if cand.local_path:
                fetched = read_local_file(cand.local_path, self.max_bytes)
            else:
                fetched = self.downloader.fetch(cand.fetch_url or cand.url)
        except Exception as exc:  # noqa: BLE001 - one candidate the fetcher did not foresee is one failed row
            fetched = FetchResult(cand.url, "failed", "error", f"{type(exc).__name__}: {exc}")
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
        except Exception as exc:  # noqa: BLE001 - bytes the decoder did not foresee: one rejected row, the crawl goes on
            return _Outcome(fetched, reject=ImageDecodeError("unreadable", f"{type(exc).__name__}: {exc}"))
        if self.store is not None:  # kept in memory: the shard writer stores it before its line is written
            return _Outcome(fetched, image)
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
            "final_url": f.final_url if f.final_url and f.final_url not in (cand.url, cand.fetch_url) else None,
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
            if outcome.temp is not None:
                outcome.temp.unlink(missing_ok=True)
            record = make_record(
                **base, **described, status="duplicate", reason=duplicate.reason(cand.label),
                detail=duplicate.detail(), duplicate_of=duplicate.kept.path,
            )  # fmt: skip
            self._emit(cand.label, record)
            return
        detail = "transcoded to PNG" if image.transcoded else None
        member = f"{image.sha256[:16]}.{image.ext}"
        if self.store is None:
            assert outcome.temp is not None
            rel = f"{cand.label}/{member}"
            record = make_record(**base, **described, status="ok", path=rel, detail=detail)
            self.manifest.append(record)  # the line first: a crash before the rename is rolled forward
            final = self.out / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(outcome.temp, final)
        else:
            shard = self.store.shard
            rel = f"{shard}/{member}"
            record = make_record(**base, **described, status="ok", path=rel, detail=detail, shard=shard,
                                 member=member)
            self.store.put(record, image.data)  # the shard writer stores the image, then writes the line
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
            "(SSRF protection); for hosts you own, run again allowing private hosts and retrying failed URLs"
        )
    return summary
