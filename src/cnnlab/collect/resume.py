"""Resuming a collect run from its manifest.

A worker writes verified bytes to ``OUT/.partial/`` (fsync'd); the run then appends the manifest
line (fsync'd) and only then renames the file into ``OUT/<class>/``. So after any crash:

* a manifest ``ok`` line whose file is missing but whose bytes are in ``.partial/`` is completed
  (the crash came between the line and the rename);
* an ``ok`` line whose file is gone altogether was deleted by hand: a ``rejected``/``removed`` line
  is appended and the URL is not fetched again;
* anything else in ``.partial/`` is an unfinished download and is deleted;
* every URL with a line is done (``failed`` ones are retried only with ``retry_failed``).

A set written as shards keeps the images of its unfinished shard in a journal instead
(:mod:`cnnlab.collect.shards`), each written there before its ``ok`` line: a line whose shard is complete is
kept, one whose image is in the journal goes into the shard now written, and one whose image is in neither
(its shard deleted by hand) is fetched again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.collect.dedup import DedupIndex, KeptImage
from cnnlab.collect.manifest import Manifest, make_record

if TYPE_CHECKING:
    from cnnlab.collect.shards import ShardStore

log = logging.getLogger("cnnlab.collect")

PARTIAL_DIR = ".partial"


@dataclass
class ResumeState:
    """What the manifest says, per class."""

    done: dict[str, set[str]] = field(default_factory=dict)  # class -> URLs decided
    ok: Counter[str] = field(default_factory=Counter)
    ok_urls: dict[str, KeptImage] = field(default_factory=dict)  # url -> kept image


def restore(
    out: Path,
    records: list[dict[str, Any]],
    manifest: Manifest,
    dedup: DedupIndex,
    retry_failed: bool,
    store: ShardStore | None = None,
) -> ResumeState:
    """Rebuild the run state from the manifest, finishing renames a crash interrupted (and, for a set written as
    shards into ``store``, the shard it left unfinished)."""
    state = ResumeState()
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in records:
        if rec.get("class") and rec.get("url"):
            last[(rec["class"], rec["url"])] = rec
    partial = out / PARTIAL_DIR
    unfinished: list[dict[str, Any]] = []
    for (label, url), rec in last.items():
        if rec.get("status") == "ok" and rec.get("shard") and store is not None:
            if not store.is_sealed(str(rec["shard"])):
                unfinished.append(rec)  # done only if the journal holds its image
                continue
            _keep(state, dedup, rec)
        elif rec.get("status") == "ok":
            rel = str(rec.get("path") or "")
            path = out / rel
            outside = bool(rel) and _outside(out, rel)  # a hand-made manifest: never write (or count) files elsewhere
            if rel and not outside and not path.is_file():
                _roll_forward(partial, rec, path)
            if rel and not outside and path.is_file():
                kept = KeptImage(label, str(rec.get("sha256")), int(str(rec.get("phash") or "0"), 16), rel)
                dedup.add(kept)
                state.ok[label] += 1
                state.ok_urls.setdefault(url, kept)
            else:
                manifest.append(
                    make_record(
                        **{k: rec.get(k) for k in ("class", "query", "engine", "url", "source_page", "license", "sha256", "phash")},
                        status="rejected",
                        reason="removed",
                        detail=f"{rel} leads outside {out}: ignored; not fetched again" if outside else
                        f"{rel} is no longer in the dataset (deleted by hand?); not fetched again",
                    )
                )
        if str(rec.get("reason") or "").startswith("quarantined-") and rec.get("sha256"):
            # moved out by `cnnlab review --apply`: the same bytes from another URL are not wanted again
            where = f"{rec.get('path') or url} (quarantined)"
            dedup.add(KeptImage(label, str(rec["sha256"]), int(str(rec.get("phash") or "0"), 16), where))
        if rec.get("status") == "failed" and retry_failed:
            continue
        state.done.setdefault(label, set()).add(url)
    if store is not None:
        for rec in store.recover(unfinished):
            _keep(state, dedup, rec)
            state.done.setdefault(str(rec["class"]), set()).add(str(rec["url"]))
    clean_partial(out)
    return state


def _keep(state: ResumeState, dedup: DedupIndex, rec: Mapping[str, Any]) -> None:
    """Count an image of a sharded set that is kept, and index it for duplicates."""
    label, url = str(rec["class"]), str(rec["url"])
    kept = KeptImage(label, str(rec.get("sha256")), int(str(rec.get("phash") or "0"), 16), str(rec.get("path")))
    dedup.add(kept)
    state.ok[label] += 1
    state.ok_urls.setdefault(url, kept)


def _outside(out: Path, rel: str) -> bool:
    """Whether the manifest path ``rel`` is absolute, climbs with ``..`` or leads out of ``out`` through a link."""
    path = Path(rel)
    if path.is_absolute() or ".." in path.parts:
        return True
    try:
        (out / path).parent.resolve().relative_to(out.resolve())
    except (ValueError, OSError, RuntimeError):
        return True
    return False


def _roll_forward(partial: Path, rec: Mapping[str, Any], final: Path) -> None:
    sha = str(rec.get("sha256") or "")
    if not sha or not partial.is_dir():
        return
    for temp in sorted(partial.glob(f"{sha[:16]}-*")):
        try:
            if hashlib.sha256(temp.read_bytes()).hexdigest() == sha:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(temp, final)
                log.info("completed the interrupted save of %s", final)
                return
        except OSError:
            continue


def clean_partial(out: Path) -> None:
    partial = out / PARTIAL_DIR
    if partial.is_dir():
        shutil.rmtree(partial, ignore_errors=True)
