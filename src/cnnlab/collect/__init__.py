"""Build a labelled image set from the web or local files: verified, deduplicated, resumable.

Entry point: :func:`collect`. Pieces, each usable alone:

* :mod:`~cnnlab.collect.engines`: search engines (Bing, Baidu, Flickr, Google via icrawler;
  DuckDuckGo via ddgs) behind the :class:`Engine` interface;
* :mod:`~cnnlab.collect.sources`: URL lists and local folders;
* :mod:`~cnnlab.collect.download`: the :class:`Downloader` (timeouts, retries, byte cap,
  redirects, robots.txt, ``X-Robots-Tag``, per-host politeness);
* :mod:`~cnnlab.collect.verify`: full decode, sha256, perceptual hash;
* :mod:`~cnnlab.collect.dedup`: exact and near-duplicate indexes;
* :mod:`~cnnlab.collect.manifest`: the append-only ``manifest.jsonl``.

``icrawler``, ``ddgs``, ``imagehash`` and ``protego`` come with the ``cnnlab[collect]`` extra and are
imported only when used.
"""

from __future__ import annotations

from cnnlab.collect.base import USER_AGENT, Candidate, CollectError, Engine, PageFetchError, SearchHit
from cnnlab.collect.download import Downloader, FetchConfig, FetchResult
from cnnlab.collect.engines import ENGINES, make_engine
from cnnlab.collect.manifest import FIELDS as MANIFEST_FIELDS
from cnnlab.collect.manifest import MANIFEST_NAME, read_manifest
from cnnlab.collect.run import ClassSummary, CollectProgress, CollectResult, collect
from cnnlab.collect.sources import parse_queries

__all__ = [
    "ENGINES",
    "MANIFEST_FIELDS",
    "MANIFEST_NAME",
    "USER_AGENT",
    "Candidate",
    "ClassSummary",
    "CollectError",
    "CollectProgress",
    "CollectResult",
    "Downloader",
    "Engine",
    "FetchConfig",
    "FetchResult",
    "PageFetchError",
    "SearchHit",
    "collect",
    "make_engine",
    "parse_queries",
    "read_manifest",
]
