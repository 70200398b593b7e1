"""Build a labelled image set from the web or local files: verified, deduplicated, resumable.

Entry point: :func:`run` (public name ``cnnlab.collect_images``) with a :class:`CollectConfig`.
Pieces, each usable alone:

* :mod:`~cnnlab.collect.engines`: search engines (Bing, Baidu, Flickr, Google via icrawler;
  DuckDuckGo via ddgs) behind the :class:`Engine` interface;
* :mod:`~cnnlab.collect.sources`: URL lists and local folders;
* :mod:`~cnnlab.collect.download`: the :class:`Downloader` (timeouts, retries, byte cap,
  redirects, robots.txt, ``X-Robots-Tag``, per-host politeness);
* :mod:`~cnnlab.collect.verify`: full decode, sha256, perceptual hash (from :mod:`cnnlab.imagedata.hashes`);
* :mod:`~cnnlab.collect.dedup`: exact and near-duplicate indexes;
* :mod:`~cnnlab.collect.manifest`: the append-only ``manifest.jsonl``;
* :mod:`~cnnlab.collect.shards`: WebDataset and Parquet shards, written only when complete.

``icrawler``, ``ddgs`` and ``protego`` come with the ``cnnlab[collect]`` extra and are
imported only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

# Names are imported on first use: the network stack is heavy, and the CLI needs only the config.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "base": ["USER_AGENT", "Candidate", "CollectError", "Engine", "PageFetchError", "SearchHit"],
        "config": ["CollectConfig", "FetchConfig", "OutputFormat"],
        "download": ["Downloader", "FetchResult"],
        "engines": ["ENGINES", "make_engine"],
        "manifest": ["MANIFEST_NAME", "read_manifest"],
        "job": ["ClassSummary", "CollectResult", "collect_images", "run"],
        "sources": ["parse_queries"],
    },
)

if TYPE_CHECKING:
    from cnnlab.collect.base import USER_AGENT, Candidate, CollectError, Engine, PageFetchError, SearchHit
    from cnnlab.collect.config import CollectConfig, FetchConfig, OutputFormat
    from cnnlab.collect.download import Downloader, FetchResult
    from cnnlab.collect.engines import ENGINES, make_engine
    from cnnlab.collect.job import ClassSummary, CollectResult, collect_images, run
    from cnnlab.collect.manifest import MANIFEST_NAME, read_manifest
    from cnnlab.collect.sources import parse_queries
