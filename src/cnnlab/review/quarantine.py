"""Acting on a review, reversibly: move flagged files into ``DIR/.quarantine/`` and back.

The quarantine folder is hidden, so dataset scans (and therefore ``bench``, ``train``, ``split``)
never read it as a class. A file keeps its relative path inside it
(``DIR/cat/x.jpg`` -> ``DIR/.quarantine/cat/x.jpg``). Every move is first appended (fsync'd) to
``DIR/.quarantine/moves.jsonl``, then made; :func:`undo_review` replays that log backwards.

A ``cnnlab collect`` folder (one with ``manifest.jsonl``) is locked against a concurrent crawl,
and each move is recorded there too: the file's ``ok`` line is followed by a ``rejected`` line with
reason ``quarantined-<issue>`` (so a resumed crawl does not fetch it again), and an undo appends the
original ``ok`` line again.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.errors import DatasetError
from cnnlab.options import ReviewIssue
from cnnlab.review.config import ISSUE_ORDER, MOVES_FILE, QUARANTINE_DIR
from cnnlab.review.result import Finding
from cnnlab.review.state import own_file, own_folder

if TYPE_CHECKING:
    from cnnlab.collect.manifest import Manifest

_MANIFEST = "manifest.jsonl"
_KEEP = ("class", "query", "engine", "url", "source_page", "final_url", "sha256", "phash", "width", "height", "bytes",
         "format", "orientation", "license", "http_status", "attempts")


@dataclass
class Move:
    """One file moved into the quarantine folder (``action`` "quarantine") or back ("restore")."""

    action: str
    path: str
    quarantined: str
    issue: str
    score: float
    suggested_label: str | None = None
    timestamp: str = ""
    manifest_record: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MoveReport:
    """What :func:`apply_review` or :func:`undo_review` did, and what it left alone (``notes``)."""

    moves: list[Move] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Moves that were tried and failed (``path: why``); the files stay where they were, and the log says so.
    failed: list[str] = field(default_factory=list)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _append(path: Path, record: dict[str, Any]) -> None:
    from cnnlab.collect.manifest import encode_line

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as fh:
        fh.write(encode_line(record))  # a name that is not UTF-8: \udcXX escapes, read back as the same name
        fh.flush()
        os.fsync(fh.fileno())


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[tuple[Manifest | None, dict[str, dict[str, Any]]]]:
    """For a collect output: hold collect's folder lock, open its manifest, map path -> ``ok`` line.

    Elsewhere: (None, {}).
    """
    if not (root / _MANIFEST).is_file():
        yield None, {}
        return
    from cnnlab.collect.manifest import FolderLock
    from cnnlab.collect.manifest import Manifest as CollectManifest

    with FolderLock(root), CollectManifest(root / _MANIFEST) as manifest:
        yield manifest, _ok_lines(manifest.open())


def _ok_lines(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """path -> manifest line, for candidates whose last line (per class and URL, as collect reads it) is ``ok``."""
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in records:
        if rec.get("class") and rec.get("url"):
            last[(str(rec["class"]), str(rec["url"]))] = rec
    return {str(r["path"]): r for r in last.values() if r.get("status") == "ok" and r.get("path")}


def _chosen(findings: Sequence[Finding], kinds: Sequence[ReviewIssue], min_score: float) -> list[Finding]:
    """One finding per file (the first in :data:`ISSUE_ORDER`) among ``kinds`` with score >= ``min_score``."""
    order = {issue: i for i, issue in enumerate(ISSUE_ORDER)}
    best: dict[str, Finding] = {}
    for f in (f for f in findings if f.issue in kinds and f.score >= min_score):
        if f.path not in best or order[f.issue] < order[best[f.path].issue]:
            best[f.path] = f
    return [best[p] for p in sorted(best)]


def _refuse_records(root: Path, what: str) -> None:
    """Images inside shards, Parquet files or a ``datasets`` folder are not files that can be moved aside."""
    from cnnlab.imagedata.sources import record_kind

    kind = record_kind(root)
    if kind is not None:
        raise DatasetError(f"{what} needs a folder of image files; {root} is a {kind} data set, whose images are "
                           "records inside its files: use the review's report (review.csv) to clean it at its source")


def check_apply(root: str | Path) -> Path:
    """What :func:`apply_review` checks before it moves anything, for a caller to check before a review's work:
    ``root`` is a folder of image files (not a set of records) whose quarantine folder is its own (not a link or
    a file). Returns the quarantine folder; raises :class:`~cnnlab.errors.DatasetError` (exit 2)."""
    root = Path(root)
    _refuse_records(root, "moving flagged files")
    if not root.is_dir():
        raise DatasetError(f"moving flagged files needs the dataset folder; {root} is not a folder")
    return own_folder(root, QUARANTINE_DIR)


def apply_review(root: str | Path, findings: Sequence[Finding], *, kinds: Sequence[ReviewIssue],
                 min_score: float = 0.0) -> MoveReport:
    """Move the files flagged with one of ``kinds`` (score >= ``min_score``) into ``root/.quarantine/``."""
    root = Path(root)
    log = own_file(check_apply(root), MOVES_FILE)
    report = MoveReport()
    with _locked(root) as (manifest, ok):
        for f in _chosen(findings, kinds, min_score):
            source = root / f.path
            if _outside(root, f.path):
                report.notes.append(f"{f.path} is outside {root}: left in place")
                continue
            if not source.is_file():
                report.notes.append(f"{f.path} is no longer there: nothing to move")
                continue
            target = root / QUARANTINE_DIR / f.path
            if _outside(root, target.relative_to(root)):
                report.notes.append(f"{target.parent} leads outside {root}: {f.path} left in place")
                continue
            if target.exists():
                report.notes.append(f"{target} already exists: {f.path} left in place")
                continue
            move = Move("quarantine", f.path, target.relative_to(root).as_posix(), f.issue.value, round(f.score, 4),
                        f.suggested_label, _now(), ok.get(f.path))
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                report.failed.append(f"{f.path}: {target.parent} cannot be made ({exc.strerror or exc}); left in place")
                continue
            _append(log, move.to_dict())  # the intent first: an interrupted move can be understood
            try:
                os.replace(source, target)
            except OSError as exc:
                _append(log, {**move.to_dict(), "action": "failed", "timestamp": _now()})  # it never happened
                report.failed.append(f"{f.path}: not moved ({exc.strerror or exc})")
                continue
            if manifest is not None and move.manifest_record is not None:
                manifest.append(_manifest_line(move))
            report.moves.append(move)
    if report.moves and (root / "split.csv").is_file():
        report.notes.append(f"{root / 'split.csv'} lists moved files: run `cnnlab split {root}` again")
    return report


def _outside(root: Path, rel: str | Path) -> bool:
    """Whether ``root / rel`` is, or (through links) leads, outside ``root``: absolute, ``..``, a linked folder."""
    rel = Path(rel)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        return True
    try:
        (root / rel).parent.resolve().relative_to(root.resolve())
    except (ValueError, OSError, RuntimeError):
        return True
    return False


def _manifest_line(move: Move) -> dict[str, Any]:
    """The manifest line that records ``move``: a ``rejected`` line, or the original ``ok`` line again."""
    from cnnlab.collect.manifest import make_record

    original = move.manifest_record or {}
    if move.action == "quarantine":
        suggestion = f", suggested class {move.suggested_label!r}" if move.suggested_label else ""
        return make_record(**{k: original.get(k) for k in _KEEP}, status="rejected", reason=f"quarantined-{move.issue}",
                           detail=f"moved to {move.quarantined} by cnnlab review (score {move.score:.2f}{suggestion})")
    return {**original, "timestamp": _now(), "detail": f"restored from {move.quarantined} by cnnlab review --undo"}


def quarantined(root: str | Path) -> dict[str, Move]:
    """The files now in quarantine (original path -> the move that put them there), from the move log."""
    log = own_file(own_folder(Path(root), QUARANTINE_DIR), MOVES_FILE)
    state: dict[str, Move] = {}
    if not log.is_file():
        return state
    for n, line in enumerate(log.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            move = Move(**json.loads(line))
        except (ValueError, TypeError) as exc:
            raise DatasetError(f"{log}:{n}: not a move record ({exc})") from None
        if move.action == "quarantine":
            state[move.path] = move
        else:  # "restore", or "failed": a logged move that did not happen
            state.pop(move.path, None)
    return state


def undo_review(root: str | Path) -> MoveReport:
    """Put every quarantined file back where it was, and say so in the move log (and the manifest)."""
    root = Path(root)
    _refuse_records(root, "undoing a review")
    if not root.is_dir():
        raise DatasetError(f"undoing a review needs the dataset folder; {root} is not a folder")
    log = own_file(own_folder(root, QUARANTINE_DIR), MOVES_FILE)
    if not log.is_file():
        raise DatasetError(f"nothing to undo: {log} does not exist (no file of {root} was quarantined)")
    report = MoveReport()
    with _locked(root) as (manifest, _):
        for path, move in sorted(quarantined(root).items()):
            source, target = root / move.quarantined, root / path
            kept = Path(move.quarantined)  # a log that came with a downloaded set must not move files elsewhere
            if _outside(root, path) or kept.parts[:1] != (QUARANTINE_DIR,) or _outside(root, kept):
                report.notes.append(f"{log}: {path!r} <- {move.quarantined!r} leads outside {root}: not restored")
                continue
            if not source.is_file():
                if target.is_file():  # the move was logged but never made (interrupted)
                    _append(log, {**move.to_dict(), "action": "restore", "timestamp": _now()})
                else:
                    report.notes.append(f"{move.quarantined} is missing: {path} cannot be restored")
                continue
            if target.exists():
                report.notes.append(f"{path} exists again: {move.quarantined} left in quarantine")
                continue
            back = Move("restore", path, move.quarantined, move.issue, move.score, move.suggested_label, _now(),
                        move.manifest_record)
            try:  # moved first, then logged: the log never records a restore that did not happen
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
            except OSError as exc:
                report.failed.append(f"{path}: not restored ({_why_not(target, root, exc)}); "
                                     f"it stays in {move.quarantined}")
                continue
            _append(log, back.to_dict())  # (killed just before: the next undo finds it back and logs it)
            if manifest is not None and back.manifest_record is not None:
                manifest.append(_manifest_line(back))
            report.moves.append(back)
            _remove_empty_parents(source.parent, root / QUARANTINE_DIR)
    return report


def _why_not(target: Path, root: Path, exc: OSError) -> str:
    """Why ``target`` cannot be written: a folder on its way that has become a file, or the OS's reason."""
    for parent in reversed(target.relative_to(root).parents[:-1]):
        if (root / parent).exists() and not (root / parent).is_dir():
            return f"{root / parent} is now a file, not a folder"
    return exc.strerror or str(exc)


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    while folder != stop and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent
