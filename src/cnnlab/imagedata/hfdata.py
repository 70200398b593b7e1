"""Hugging Face datasets and Parquet files: their names, splits, and which columns hold the images and labels.

The ``Image`` and ``ClassLabel`` features say which columns when ``datasets`` wrote the file; otherwise the usual
names do. Loading goes through ``datasets`` (imported only when a dataset is read).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cnnlab.errors import DatasetError

#: The prefix of a dataset on the Hugging Face hub: ``hf:NAME[:CONFIG][/SPLIT]``.
HF_PREFIX = "hf:"

#: Label column names tried when the features name no ``ClassLabel`` column.
LABEL_COLUMN_NAMES: tuple[str, ...] = ("label", "labels", "class", "category", "target", "fine_label")
#: Image column names tried when the features name no ``Image`` column.
IMAGE_COLUMN_NAMES: tuple[str, ...] = ("image", "img", "jpg", "png", "webp", "image_bytes")

def find_columns(features: Any, column_names: Sequence[str], image_column: str | None,
                  label_column: str | None, where: str, labelled: bool = True) -> tuple[str, str]:
    """The image and label columns: those given, else the ``Image`` and ``ClassLabel`` features, else
    usual names (``labelled=False``: the image column only, the label column is returned as "")."""
    from datasets import ClassLabel, Image

    def pick(given: str | None, kind: type, usual: Sequence[str], what: str) -> str:
        if given is not None:
            if given not in column_names:
                raise DatasetError(f"{where} has no column {given!r} (it has {', '.join(column_names)})")
            return given
        typed = [n for n, f in (features or {}).items() if isinstance(f, kind)]
        if typed:
            return typed[0]
        for name in usual:
            if name in column_names:
                return name
        raise DatasetError(f"{where}: no {what} column found among {', '.join(column_names)}; name it "
                           f"({what}_column)")

    image = pick(image_column, Image, IMAGE_COLUMN_NAMES, "image")
    return image, pick(label_column, ClassLabel, LABEL_COLUMN_NAMES, "label") if labelled else ""


def features_of(schema: Any) -> Any:
    """The ``datasets`` features a Parquet or Arrow schema records (``None`` for a file ``datasets`` did not write)."""
    from datasets import Features

    try:
        return Features.from_arrow_schema(schema)
    except Exception:  # noqa: BLE001 - no or foreign metadata: plain columns
        return None


#: The split names a user may give (train/val/test) -> the names datasets use for them.
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("validation", "val", "valid", "dev"),
    "test": ("test", "testing", "eval"),
}


def choose_split(available: Sequence[str], split: str | None, where: str,
                 alone: Callable[[str], str | None] | None = None) -> str | None:
    """The dataset's name for the split the user asked for; without one, the only split, else an error.

    ``alone`` gives the name under which one split is read on its own (``saved/validation``,
    ``hf:beans/validation``, ``'data/validation-*.parquet'``), for the commands that take no split: the error
    names them."""
    if split is None:
        if len(available) <= 1:
            return available[0] if available else None
        names = [alone(s) for s in available] if alone is not None else []
        how = ""
        if names and all(names):
            shown = " or ".join(str(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
            how = f", or read one split on its own as {shown}"
        raise DatasetError(f"{where} has splits {', '.join(available)}: choose one (split){how}")
    if split in available:
        return split
    for alias in SPLIT_ALIASES.get(split.lower(), ()):
        if alias in available:
            return alias
    raise DatasetError(f"{where} has no split {split!r} (it has {', '.join(available) or 'none'})")


def hf_split_name(source: str, split: str) -> str | None:
    """The ``hf:`` name that reads split ``split`` of dataset ``source`` on its own (``None``: none says it)."""
    name, config, _ = parse_hf_name(source)
    candidate = f"{HF_PREFIX}{name}" + (f":{config}" if config else "") + f"/{split}"
    try:
        return candidate if parse_hf_name(candidate) == (name, config, split) else None
    except DatasetError:
        return None


def saved_split_name(folder: str, split: str) -> str | None:
    """The folder that holds split ``split`` of a saved ``DatasetDict``, read on its own (``None``: there is none)."""
    path = Path(folder) / split
    return str(path) if (path / "state.json").is_file() else None


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """``datasets``' own progress bars off while cnnlab loads a dataset (cnnlab shows its own progress, and a quiet
    run stays quiet); as they were afterwards. ``HF_DATASETS_DISABLE_PROGRESS_BARS=0`` keeps them on."""
    from datasets import config
    from datasets.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    if config.HF_DATASETS_DISABLE_PROGRESS_BARS is not None or are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            enable_progress_bars()


def parse_hf_name(text: str) -> tuple[str, str | None, str | None]:
    """``hf:NAME[:CONFIG][/SPLIT]`` -> (name, config, split). NAME may be ``owner/name``; ``hf:a/b`` is split
    ``b`` of dataset ``a`` only when ``b`` is a usual split name (train, validation, test...)."""
    body = text[len(HF_PREFIX):].rstrip("/")
    if not body:
        raise DatasetError(f"{text}: name a dataset, e.g. hf:beans/validation")
    if body.startswith(("/", ".")):  # a local folder that load_dataset reads (its data files, by split)
        local = Path(body)
        return (body, None, None) if local.exists() or not local.parent.is_dir() else (str(local.parent), None,
                                                                                        local.name)
    config = None
    parts = body.split("/")
    split = None
    known = {alias for aliases in SPLIT_ALIASES.values() for alias in aliases}
    if len(parts) >= 3 or (len(parts) == 2 and (":" in parts[0] or parts[1] in known)):
        split = parts[-1]
        parts = parts[:-1]
    name = "/".join(parts)
    if ":" in name:
        name, config = name.split(":", 1)
    return name, config or None, split


def load_arrow_dataset(source: str, kind: str, split: str | None) -> tuple[Any, str]:
    """The ``datasets.Dataset`` of one split, and the container name its records carry."""
    import datasets

    if kind == "hf":
        name, config, given = parse_hf_name(source)
        try:
            with quiet_datasets():
                if given is None:
                    split_names = list(datasets.get_dataset_split_names(name, config))
                    given = choose_split(split_names, split, source, lambda s: hf_split_name(source, s))
                elif split is not None and split not in (given, *SPLIT_ALIASES.get(split.lower(), ())):
                    raise DatasetError(f"{source} names split {given!r}; split {split!r} contradicts it")
                dataset = datasets.load_dataset(name, config, split=given)
        except DatasetError:
            raise
        except Exception as exc:  # noqa: BLE001 - network, hub and format errors all mean "cannot read it"
            raise DatasetError(f"cannot load the Hugging Face dataset {source}: {type(exc).__name__}: {exc}") from None
        container = f"{HF_PREFIX}{name}" + (f":{config}" if config else "") + f"/{given}"
        return _without_indices(dataset), container
    folder = Path(source)
    try:
        with quiet_datasets():
            loaded = datasets.load_from_disk(str(folder))
    except Exception as exc:  # noqa: BLE001
        raise DatasetError(f"cannot read the saved dataset {folder}: {type(exc).__name__}: {exc}") from None
    if isinstance(loaded, datasets.DatasetDict):
        chosen = choose_split(list(loaded), split, source, lambda s: saved_split_name(source, s))
        assert chosen is not None
        return _without_indices(loaded[chosen]), str(folder / chosen)
    if split is not None:
        raise DatasetError(f"{source} is one set without splits; leave split out")
    return _without_indices(loaded), str(folder)


def _without_indices(dataset: Any) -> Any:
    """``dataset`` with its rows in its Arrow files (a selection of rows is written out once)."""
    if getattr(dataset, "_indices", None) is None:
        return dataset
    with quiet_datasets():
        return dataset.flatten_indices()


def check_label_type(arrow_type: Any, column: str, where: str) -> None:
    """Refuse a label column that holds neither class indices (integers) nor class names (strings)."""
    import pyarrow as pa

    def fits(kind: Any) -> bool:
        string_view = getattr(pa.types, "is_string_view", lambda _: False)
        return bool(pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)
                    or string_view(kind) or pa.types.is_null(kind))

    if fits(arrow_type) or (pa.types.is_dictionary(arrow_type) and fits(arrow_type.value_type)):
        return
    raise DatasetError(f"{where}: the label column {column!r} holds {arrow_type} values; a label is a class index "
                       "(an integer) or a class name (a string): name the label column (label_column)")
