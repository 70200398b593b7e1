"""Candidates that do not come from a search engine: URL lists and local folders; query parsing."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from cnnlab.collect.base import Candidate, CollectError, check_label
from cnnlab.imagedata.datasets import IMAGE_EXTENSIONS, is_junk_name

log = logging.getLogger("cnnlab.collect")


def parse_queries(specs: Iterable[str]) -> dict[str, list[str]]:
    """``["cat=tabby cat,house cat", "dog=puppy"]`` -> ``{"cat": ["tabby cat", "house cat"], ...}``.

    A class given twice gets the queries of both.
    """
    queries: dict[str, list[str]] = {}
    for spec in specs:
        if "=" not in spec:
            raise CollectError(f"search terms {spec!r}: expected CLASS=terms[,terms...] (e.g. \"cat=tabby cat,house cat\")")
        label, _, rest = spec.partition("=")
        label = check_label(label)
        terms = [t.strip() for t in rest.split(",") if t.strip()]
        if not terms:
            raise CollectError(f"search terms {spec!r}: none after '='")
        queries.setdefault(label, []).extend(t for t in terms if t not in queries.get(label, []))
    return queries


def default_query(label: str) -> str:
    """The search terms for a class with no ``--query``: its name, ``_`` and ``-`` read as spaces."""
    return label.replace("_", " ").replace("-", " ").strip()


def load_url_list(path: str | Path, label: str | None = None, *, rejected: list[str] | None = None) -> list[Candidate]:
    """Candidates from a URL list.

    A row whose class name cannot be a folder name is an error, unless ``rejected`` is given: then the row is
    left out and why is appended to it (one bad row does not stop a run of thousands).

    * ``.csv``: a header with ``url`` and ``label`` columns (``label`` may be left out when
      ``label`` is given), optionally ``source_page``, ``license`` and ``query``;
    * ``.jsonl`` / ``.ndjson``: one object per line with the same keys;
    * anything else: one URL per line (blank lines and ``#`` comments skipped); needs ``label``.
    """
    path = Path(path)
    if not path.is_file():
        raise CollectError(f"no such URL list: {path}")
    default = check_label(label) if label else None
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CollectError(f"{path} is not UTF-8 text: {exc}") from None
    rows: list[tuple[int, Mapping[str, object]]] = []
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "url" not in reader.fieldnames:
            raise CollectError(f"{path}: a CSV URL list needs a 'url' column (and 'label', or a label for the whole list)")
        rows = [(n, row) for n, row in enumerate(reader, 2)]
    elif suffix in (".jsonl", ".ndjson"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CollectError(f"{path}:{n}: not JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise CollectError(f"{path}:{n}: expected a JSON object with 'url' and 'label'")
            rows.append((n, obj))
    else:
        if default is None:
            raise CollectError(f"{path} is a plain URL list: give the class of its images (label)")
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                rows.append((n, {"url": line}))
    candidates = []
    for n, row in rows:
        url = str(row.get("url") or "").strip()
        if not url:
            continue
        raw_label = str(row.get("label") or "").strip() or default
        if not raw_label:
            raise CollectError(f"{path}:{n}: no label for {url} (add a 'label' column or give a label for the whole list)")
        try:
            row_label = check_label(raw_label)
        except CollectError as exc:
            if rejected is None:
                raise
            rejected.append(f"{path}:{n}: {exc}")
            continue
        candidates.append(
            Candidate.from_url(
                label=row_label,
                url=url,
                engine="urls",
                query=_opt(row.get("query")),
                source_page=_opt(row.get("source_page")),
                license=_opt(row.get("license")),
            )
        )
    return candidates


def folder_candidates(root: str | Path, label: str | None = None) -> list[Candidate]:
    """Candidates from a folder: every file under ``ROOT`` labelled ``label`` if given, otherwise
    ``ROOT/<class>/...`` (any depth below the class folder).

    Every file is a candidate (decoding decides what is an image; reading refuses what is not a
    regular file) except hidden names and operating-system litter
    (:func:`cnnlab.imagedata.datasets.is_junk_name`): camera names such as ``_DSC0001.JPG`` are imported. At
    the top level, folders starting with ``_`` are not classes. Links to folders are not followed;
    a folder that cannot be read is reported (a warning on the ``cnnlab.collect`` logger).
    """
    root = Path(root)
    if not root.is_dir():
        raise CollectError(f"no such folder to import: {root}")
    if label:
        name = check_label(label)
        return [_file_candidate(p, name) for p in _walk(root)]
    try:
        entries = sorted(e for e in root.iterdir() if not is_junk_name(e.name) and not e.name.startswith("_"))
    except OSError as exc:
        raise CollectError(f"cannot read the folder to import {root}: {exc.strerror or exc}") from None
    top_images = [e for e in entries if e.is_file() and e.suffix.lower() in IMAGE_EXTENSIONS]
    if top_images:
        raise CollectError(
            f"{root} has images at its top level ({top_images[0].name}, ...): give a label to import everything "
            f"under it as one class, or arrange the files as {root}/<class>/<files>"
        )
    for other in (e for e in entries if e.is_file()):  # notes, SOURCES.csv, a README: not part of any class
        log.info("%s is a file at the top level, not in a class folder: not imported", other)
    candidates: list[Candidate] = []
    for folder in (e for e in entries if e.is_dir()):
        name = check_label(folder.name)
        candidates.extend(_file_candidate(p, name) for p in _walk(folder))
    return candidates


def _walk(folder: Path) -> list[Path]:
    found: list[Path] = []

    def unreadable(exc: OSError) -> None:
        log.warning("cannot read the folder %s (%s): its files are not imported", exc.filename, exc.strerror or exc)

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable):
        dirnames[:] = sorted(d for d in dirnames if not is_junk_name(d))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if not is_junk_name(f))
    return found


def _file_candidate(path: Path, label: str) -> Candidate:
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a link to itself (or a loop of links): reading it will say so
        resolved = path.absolute()
    return Candidate(label=label, url=resolved.as_uri(), engine="folder", local_path=str(resolved))


def _opt(value: object) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def group_by_label(candidates: Sequence[Candidate]) -> dict[str, list[Candidate]]:
    """Candidates per class, in first-seen class order and original order within a class."""
    groups: dict[str, list[Candidate]] = {}
    for c in candidates:
        groups.setdefault(c.label, []).append(c)
    return groups
