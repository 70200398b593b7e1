"""Class name -> ImageNet-1k class mapping through WordNet (cnnlab.imagedata.labels, the command: tests/cli/test_labels.py)."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import pytest

from cnnlab.errors import DatasetError
from cnnlab.imagedata.labels import (
    describe_indices,
    imagenet_categories,
    imagenet_wnids,
    load_mapping_file,
    map_classes,
    resolve_label,
)

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "scripts" / "generate_imagenet_hierarchy.py"
HIERARCHY = ROOT / "src" / "cnnlab" / "imagedata" / "imagenet_hierarchy.json"

# WordNet's "cat, true cat" (n02121620) holds the five domestic cats 281-285 and, through
# "wildcat", also cougar 286 and lynx 287. The big cats 288-293 (leopard ... cheetah) sit under
# "big cat, cat" (n02127808), which is sense #7 of "cat" and so not used.
CAT = (281, 282, 283, 284, 285, 286, 287)


def test_imagenet_class_lists() -> None:
    names, wnids = imagenet_categories(), imagenet_wnids()
    assert len(names) == len(wnids) == 1000
    assert wnids == sorted(wnids)
    assert (names[281], wnids[281]) == ("tabby", "n02123045")
    assert describe_indices([281, 967]) == ["281 tabby", "967 espresso"]


def test_cat_is_sense_one_without_big_cats() -> None:
    m = resolve_label("cat")
    assert (m.how, m.indices) == ("wordnet", CAT)
    assert m.synset == "n02121620 cat, true cat"
    assert 291 not in m.indices and 292 not in m.indices  # lion, tiger
    assert "sense #7 n02127808 big cat" in m.note  # the alternative is reported, not used
    assert m.mapped


@pytest.mark.parametrize("name", ["cats", "Cats", " CAT "])
def test_plural_and_case_work_like_cat(name: str) -> None:
    assert resolve_label(name).indices == CAT


def test_dog_is_exactly_the_118_breeds() -> None:
    m = resolve_label("dog")
    assert m.how == "wordnet"
    assert m.indices == tuple(range(151, 269))
    assert m.synset is not None and m.synset.startswith("n02084071 dog")


def test_coffee_includes_espresso() -> None:
    m = resolve_label("coffee")
    assert m.how == "wordnet" and 967 in m.indices


@pytest.mark.parametrize(
    ("name", "index"),
    [("tabby", 281), ("Tabby_Cat", 281), ("281", 281), ("n02123045", 281), ("military_uniforms", 652)],
)
def test_exact_names_indices_and_wnids(name: str, index: int) -> None:
    m = resolve_label(name)
    assert (m.how, m.indices) == ("exact-name", (index,))


def test_wnid_of_an_ancestor_expands() -> None:
    assert resolve_label("n02121620").indices == CAT


@pytest.mark.parametrize("name", ["crane", "Cranes", "missile"])
def test_name_shared_by_two_classes_is_ambiguous(name: str) -> None:
    m = resolve_label(name)
    assert m.how == "ambiguous"
    assert m.indices == () and not m.mapped
    assert len(m.candidates) == 2
    if name != "missile":  # crane: bird 134 and machine 517
        assert [c.split()[0] for c in m.candidates] == ["134", "517"]


def test_senses_without_sense_one_are_ambiguous() -> None:
    # "table": sense #1 is a data table; #2 (furniture) and #3 (tableland) both have classes.
    m = resolve_label("table")
    assert m.how == "ambiguous" and m.indices == ()
    assert [c.split()[:2] for c in m.candidates] == [["sense", "#2"], ["sense", "#3"]]


def test_only_sense_with_classes_is_chosen_and_said() -> None:
    m = resolve_label("seal")  # sense #9 (the animal) is the only one above sea lion 150
    assert (m.how, m.indices) == ("wordnet", (150,))
    assert "sense #9" in m.note and "only one" in m.note


@pytest.mark.parametrize("name", ["blurfl", "", "1000", "n00000000"])
def test_unknown_is_unmapped_with_a_note(name: str) -> None:
    m = resolve_label(name)
    assert (m.how, m.indices) == ("unmapped", ())
    assert m.note


def test_to_dict_is_json_ready() -> None:
    d = resolve_label("tabby").to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["indices"] == [281] and d["classes"] == ["281 tabby"] and d["mapped"] is True


MAPPING = {"crane": ["crane bird"], "blurfl": ["tabby", 282, "n02123394"], "Great_Dane": 246}


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_mapping_file_overrides_and_extends(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"map{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(MAPPING))
    else:
        path.write_text("crane: [crane bird]\nblurfl:\n  - tabby\n  - 282\n  - n02123394\nGreat_Dane: 246\n")
    assert load_mapping_file(path) == {"crane": (134,), "blurfl": (281, 282, 283), "Great_Dane": (246,)}

    result = map_classes(["crane", "blurfl", "cat", "great dane"], path)
    assert (result["crane"].how, result["crane"].indices) == ("mapping-file", (134,))  # overrides ambiguous
    assert result["blurfl"].indices == (281, 282, 283)  # extends: unmapped by itself
    assert result["great dane"].indices == (246,)  # key matched after normalisation
    assert (result["cat"].how, result["cat"].indices) == ("wordnet", CAT)  # untouched
    assert map_classes(["crane"])["crane"].how == "ambiguous"  # no file: automatic


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ({"crane": ["blurfl"]}, "'blurfl'"),
        ({"crane": ["table"]}, "ambiguous"),
        ({"crane": [1000]}, "1000"),
        ({"crane": [True]}, "True"),
        ({"crane": [1.5]}, "1.5"),
        ({"crane": [{"a": 1}]}, "'a'"),
        ({"crane": []}, "no ImageNet classes"),
        (["crane"], "expected a mapping"),
    ],
)
def test_bad_mapping_entries_raise(tmp_path: Path, content: object, needle: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DatasetError) as info:
        load_mapping_file(path)
    assert needle in str(info.value)
    if isinstance(content, dict):
        assert "class 'crane'" in str(info.value)


@pytest.mark.parametrize(("name", "text"), [("m.txt", "{}"), ("m.yaml", "crane: [134"), ("missing.yaml", None)])
def test_unreadable_mapping_files_raise(tmp_path: Path, name: str, text: str | None) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(DatasetError, match=name):
        load_mapping_file(path)


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("generate_imagenet_hierarchy", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_file_is_compact_and_deterministic() -> None:
    text = HIERARCHY.read_text(encoding="utf-8")
    doc = json.loads(text)
    assert _generator().render(doc) == text
    assert doc["schema"] == 1 and len(doc["classes"]["wnids"]) == 1000


WORDNET = Path("/usr/share/wordnet/data.noun")


@pytest.mark.skipif(not WORDNET.is_file(), reason="WordNet 3.0 (Debian wordnet-base) not installed")
def test_committed_file_round_trips_from_its_generator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = _generator()
    monkeypatch.setattr(gen, "build_hierarchy", functools.cache(gen.build_hierarchy))  # build once
    assert gen.check(HIERARCHY) == []
    assert gen.main(["--check"]) == 0

    stale = json.loads(HIERARCHY.read_text(encoding="utf-8"))
    stale["lemmas"]["cat"] = stale["lemmas"]["cat"][1:]
    tampered = tmp_path / "stale.json"
    tampered.write_text(gen.render(stale))
    assert gen.check(tampered) == ["'lemmas' differs"]
    assert gen.main(["--check", "--output", str(tampered)]) == 1

