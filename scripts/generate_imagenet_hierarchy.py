#!/usr/bin/env python3
"""Generate ``src/cnnlab/data/imagenet_hierarchy.json`` from WordNet 3.0, timm and torchvision.

Run once after changing this script or a source; ``--check`` regenerates the file in memory
and exits non-zero if the committed file holds different data::

    python scripts/generate_imagenet_hierarchy.py            # write the file
    python scripts/generate_imagenet_hierarchy.py --check    # verify it

Inputs:

* WordNet 3.0 noun database (Debian package ``wordnet-base``): ``data.noun``, ``index.noun``,
  ``noun.exc`` in ``/usr/share/wordnet`` (format: wndb(5)).
* The 1000 ImageNet-1k synset ids, sorted = class index order: timm's
  ``timm/data/_info/imagenet_synsets.txt``.
* The 1000 display names: ``torchvision.models.ResNet50_Weights.DEFAULT.meta["categories"]``.

Output (schema 1; JSON with sorted keys, compact, one trailing newline):

* ``schema``: 1.
* ``sources``: where the data came from (WordNet path, timm and torchvision versions).
* ``classes``: ``wnids`` and ``names``, 1000 each, in class index order.
* ``synsets``: every ImageNet class and every synset above one via hypernym (``@``) or
  instance-hypernym (``@i``) pointers: ``{wnid: {"lemmas": [...], "hypernyms": [wnid, ...]}}``.
  Lemmas are spelled as in ``data.noun`` (underscores for spaces, original case).
* ``lemmas``: for each lemma of those synsets (lower case, as in ``index.noun``), all its noun
  senses in WordNet sense order as ``[sense_number, wnid]``, including senses whose synset is
  not in ``synsets`` (those have no ImageNet class below them).
* ``exceptions``: ``noun.exc`` entries (irregular plural -> base forms) whose base is in ``lemmas``.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import sys
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
WORDNET_DIR = Path("/usr/share/wordnet")
OUTPUT = Path(__file__).resolve().parents[1] / "src" / "cnnlab" / "imagedata" / "imagenet_hierarchy.json"
HYPERNYM_POINTERS = {"@", "@i"}


def wnid(offset: str | int) -> str:
    """``2121620`` or ``"02121620"`` -> ``"n02121620"``."""
    return f"n{int(offset):08d}"


def parse_data_noun(path: Path) -> dict[str, dict[str, list[str]]]:
    """Every noun synset in ``data.noun``: ``{wnid: {"lemmas": [...], "hypernyms": [...]}}``."""
    synsets: dict[str, dict[str, list[str]]] = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("  "):  # license header
                continue
            fields = line.split(" | ", 1)[0].split()
            offset, _lex_filenum, _ss_type, w_cnt = fields[:4]
            n_words = int(w_cnt, 16)
            lemmas = fields[4 : 4 + 2 * n_words : 2]
            pos = 4 + 2 * n_words
            p_cnt = int(fields[pos])
            pointers = fields[pos + 1 : pos + 1 + 4 * p_cnt]
            hypernyms = [
                wnid(pointers[i + 1])
                for i in range(0, len(pointers), 4)
                if pointers[i] in HYPERNYM_POINTERS and pointers[i + 2] == "n"
            ]
            synsets[wnid(offset)] = {"lemmas": lemmas, "hypernyms": hypernyms}
    return synsets


def parse_index_noun(path: Path) -> dict[str, list[str]]:
    """``{lemma: [wnid of sense 1, wnid of sense 2, ...]}`` from ``index.noun``."""
    index: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("  "):
                continue
            fields = line.split()
            lemma, _pos, synset_cnt, p_cnt = fields[:4]
            offsets = fields[4 + int(p_cnt) + 2 :]
            if len(offsets) != int(synset_cnt):
                raise ValueError(f"index.noun: malformed line for {lemma!r}")
            index[lemma] = [wnid(o) for o in offsets]
    return index


def parse_exceptions(path: Path) -> dict[str, list[str]]:
    """``{inflected form: [base forms]}`` from ``noun.exc``."""
    exceptions: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            inflected, *bases = line.split()
            exceptions.setdefault(inflected, []).extend(bases)
    return exceptions


def imagenet_sources() -> tuple[list[str], list[str], dict[str, str]]:
    """The 1000 wnids and display names, and the versions of the packages they came from."""
    import timm
    import torchvision
    from torchvision.models import ResNet50_Weights

    synsets_file = importlib.resources.files("timm") / "data" / "_info" / "imagenet_synsets.txt"
    wnids = synsets_file.read_text(encoding="utf-8").split()
    names = list(ResNet50_Weights.DEFAULT.meta["categories"])
    if len(wnids) != 1000 or len(names) != 1000 or wnids != sorted(wnids):
        raise ValueError("expected 1000 sorted ImageNet synset ids and 1000 names")
    return wnids, names, {"timm": timm.__version__, "torchvision": torchvision.__version__}


def build_hierarchy(wordnet_dir: Path = WORDNET_DIR) -> dict[str, Any]:
    """Build the whole JSON document in memory."""
    all_synsets = parse_data_noun(wordnet_dir / "data.noun")
    index = parse_index_noun(wordnet_dir / "index.noun")
    wnids, names, versions = imagenet_sources()

    missing = [w for w in wnids if w not in all_synsets]
    if missing:
        raise ValueError(f"ImageNet synsets missing from WordNet: {missing[:5]}")

    keep: set[str] = set()
    stack = list(wnids)
    while stack:  # ImageNet classes and all their ancestors
        current = stack.pop()
        if current not in keep:
            keep.add(current)
            stack.extend(all_synsets[current]["hypernyms"])
    synsets = {w: all_synsets[w] for w in sorted(keep)}

    lemma_keys = sorted({lemma.lower() for s in synsets.values() for lemma in s["lemmas"]})
    lemmas = {key: [[n, w] for n, w in enumerate(index[key], start=1)] for key in lemma_keys}
    exceptions = {
        inflected: bases
        for inflected, bases in sorted(parse_exceptions(wordnet_dir / "noun.exc").items())
        if any(base in lemmas for base in bases)
    }
    return {
        "schema": SCHEMA_VERSION,
        "sources": {"wordnet": f"WordNet 3.0 ({wordnet_dir})", **versions},
        "classes": {"wnids": wnids, "names": names},
        "synsets": synsets,
        "lemmas": lemmas,
        "exceptions": exceptions,
    }


def render(document: dict[str, Any]) -> str:
    """Deterministic, compact JSON text."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def check(path: Path = OUTPUT, wordnet_dir: Path = WORDNET_DIR) -> list[str]:
    """Differences between the file at ``path`` and a fresh build; empty if it is up to date.

    Package versions in ``sources`` are not compared (a reinstall with another local build tag
    must not fail the check); every piece of data is.
    """
    if not path.is_file():
        return [f"{path} does not exist"]
    committed = json.loads(path.read_text(encoding="utf-8"))
    fresh = json.loads(render(build_hierarchy(wordnet_dir)))
    problems = [
        f"{key!r} differs"
        for key in sorted(set(committed) | set(fresh))
        if key != "sources" and committed.get(key) != fresh.get(key)
    ]
    if committed.get("sources", {}).get("wordnet") != fresh["sources"]["wordnet"]:
        problems.append("'sources.wordnet' differs")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="verify the committed file, write nothing")
    parser.add_argument("--wordnet-dir", type=Path, default=WORDNET_DIR)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)

    if args.check:
        problems = check(args.output, args.wordnet_dir)
        for problem in problems:
            print(f"out of date: {problem}", file=sys.stderr)
        if not problems:
            print(f"{args.output} is up to date")
        return 1 if problems else 0

    text = render(build_hierarchy(args.wordnet_dir))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output} ({len(text.encode()):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
