"""Near-duplicates that perceptual hashes miss: crops, rescales and recolours of one picture.

Two steps, as copy-detection systems do:

1. *Candidates* from the features: every image's nearest neighbours by cosine similarity (crops,
   rescales and recolours of one picture stay close in a CNN's feature space, but so do two
   different pictures of the same thing, and a tight crop can fall to 0.5: similarity alone
   cannot decide; measured in ``benchmarks/bench_review.py``).
2. *Verification* on pixels: a grey-scale thumbnail of one image, scaled as if it were a crop
   keeping 55-100% of each side of the other, is slid over the other's thumbnail; the best
   normalised cross-correlation (NCC, insensitive to brightness, contrast and colour changes) is
   the pair's score. The aspect ratios of the two images fix one side's fraction from the other's,
   so one fraction is searched, in both directions: first on 48-pixel thumbnails, then, for the
   few pairs that pass, on 96-pixel ones (which tell a real crop from two similar-looking
   patches). There the edges (gradient magnitudes) must match too, which repetitive textures
   rarely do by chance; where an image has almost no edges (a patch of sky, a blur) grey levels
   prove little, and the features must agree instead. Thumbnails with no contrast at all are not
   matched. Mirrored copies are not looked for.

Groups form around kept images: images are taken in order of preference (not a crop of another,
most pixels, first path); one not yet placed is kept and the images it matched become its
duplicates, within or across classes. A group never chains two images that did not match.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.imagedata.neighbours import Neighbours

#: Longer side of the grey-scale thumbnails compared first, and of those that confirm a match, in pixels.
THUMB_SIDE = 48
FINE_SIDE = 96
#: A first match at or above this is confirmed on the finer thumbnails.
COARSE_THRESHOLD = 0.8
#: The edges (gradient magnitudes) of a confirmed pair must match at least this well...
EDGE_THRESHOLD = 0.8
#: ... unless one has almost no edges (standard deviation of the gradient magnitude below this):
FLAT_EDGES = 2.5
#: then the features must agree at least this much instead (a smooth patch matches any other).
FLAT_MIN_SIMILARITY = 0.75
#: A thumbnail whose grey levels vary less than this (standard deviation) is too flat to match.
MIN_CONTRAST = 2.0
_COARSE = (1.0, 0.9, 0.8, 0.7, 0.6)
_FINE = tuple(1.0 - 0.05 * i for i in range(9))


@dataclass
class DuplicateFindings:
    """``group[i]``: the group id of image ``i`` (-1: in none); ``keeper[i]``: the image it duplicates (-1: none)."""

    group: np.ndarray
    keeper: np.ndarray
    score: np.ndarray
    flagged: np.ndarray
    pairs: list[tuple[int, int, float]] = field(default_factory=list)
    checked_pairs: int = 0


def thumbnail(path: str | Path, side: int = THUMB_SIDE) -> np.ndarray:
    """Grey-scale thumbnail (uint8), longer side ``side``, upright (EXIF). Raises ImageDecodeError."""
    from PIL import Image

    from cnnlab.imagedata.decode import decode_image

    img = decode_image(path, draft_to=side).convert("L")
    scale = side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return np.asarray(img.resize(size, Image.Resampling.BILINEAR), dtype=np.uint8)


class _Target:
    """An image to slide templates over: its FFT and window-sum tables, computed once."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.x = pixels.astype(np.float64)
        self.h, self.w = self.x.shape
        self.fft = np.fft.rfft2(self.x)
        self.s1 = np.pad(self.x.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        self.s2 = np.pad((self.x**2).cumsum(0).cumsum(1), ((1, 0), (1, 0)))

    def _window_sums(self, table: np.ndarray, h: int, w: int) -> np.ndarray:
        return table[h:, w:] - table[:-h, w:] - table[h:, :-w] + table[:-h, :-w]

    def ncc(self, template: np.ndarray) -> float:
        """Best normalised cross-correlation of ``template`` over every place it fits entirely."""
        return self.ncc_many([template])[0]

    def ncc_many(self, templates: Sequence[np.ndarray]) -> list[float]:
        """:meth:`ncc` of each template, their FFTs taken together (one call, not one per template)."""
        scores = [-1.0] * len(templates)
        live: list[tuple[int, np.ndarray, float]] = []
        for i, template in enumerate(templates):
            h, w = template.shape
            if h > self.h or w > self.w or h < 4 or w < 4:
                continue
            t = template - template.mean()
            norm = float(np.sqrt((t * t).sum()))
            if norm >= 1e-9:
                live.append((i, t, norm))
        if not live:
            return scores
        flipped = np.zeros((len(live), self.h, self.w))
        for row, (_, t, _) in enumerate(live):
            flipped[row, :t.shape[0], :t.shape[1]] = t[::-1, ::-1]
        corrs = np.fft.irfft2(self.fft * np.fft.rfft2(flipped), s=self.x.shape)
        for row, (i, t, norm) in enumerate(live):
            h, w = t.shape
            corr = corrs[row, h - 1:, w - 1:]
            s1 = self._window_sums(self.s1, h, w)
            var = self._window_sums(self.s2, h, w) - s1 * s1 / (h * w)
            scores[i] = float((corr / (np.sqrt(np.maximum(var, 1e-9)) * norm)).max())
        return scores


def _resize(pixels: np.ndarray, w: int, h: int) -> np.ndarray:
    from PIL import Image

    image = Image.fromarray(pixels if pixels.dtype == np.uint8 else pixels.astype(np.float32))
    return np.asarray(image.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float64)


def edges(pixels: np.ndarray) -> np.ndarray:
    """Gradient magnitude (central differences) of a grey-scale thumbnail, as float32."""
    x = pixels.astype(np.float32)
    gx = np.zeros_like(x)
    gy = np.zeros_like(x)
    gx[:, 1:-1] = x[:, 2:] - x[:, :-2]
    gy[1:-1, :] = x[2:, :] - x[:-2, :]
    return np.sqrt(gx * gx + gy * gy)


def _inside(big: _Target, small: np.ndarray, grid: Sequence[float] = _COARSE, step: float = 0.025) -> tuple[float, float]:
    """Best NCC of ``small`` scaled as a crop keeping a fraction fx (and the fy its aspect implies) of ``big``, and that fx."""
    ratio = (big.w / big.h) / (small.shape[1] / small.shape[0])  # fy = fx * ratio

    def sizes(fx: float) -> tuple[int, int] | None:
        fy = fx * ratio
        if not (0.55 <= fx <= 1.0 and 0.55 <= fy <= 1.03):
            return None
        return max(1, round(fx * big.w)), max(1, round(min(fy, 1.0) * big.h))

    def at(fxs: Sequence[float]) -> list[float]:
        wanted = [sizes(fx) for fx in fxs]
        scores = iter(big.ncc_many([_resize(small, *s) for s in wanted if s is not None]))
        return [-1.0 if s is None else next(scores) for s in wanted]

    best, fx0 = max(zip(at(grid), grid))
    if best < 0.5:
        return best, fx0
    near = (fx0 - step, fx0 + step)
    return max((best, fx0), *zip(at(near), near))


def match_detail(a: np.ndarray, b: np.ndarray, *, fine: bool = False) -> tuple[float, bool, float]:
    """(best NCC in [-1, 1], whether ``a`` is the crop of ``b`` rather than the reverse, the side fraction kept).

    ``fine``: the finer search used on the larger thumbnails that confirm a match.
    """
    if float(a.std()) < MIN_CONTRAST or float(b.std()) < MIN_CONTRAST:
        return -1.0, False, 1.0
    grid, step = (_FINE, 0.0125) if fine else (_COARSE, 0.025)
    b_in_a = _inside(_Target(a), b, grid, step)
    a_in_b = _inside(_Target(b), a, grid, step)
    return (a_in_b[0], True, a_in_b[1]) if a_in_b[0] > b_in_a[0] else (b_in_a[0], False, b_in_a[1])


def match(a: np.ndarray, b: np.ndarray, *, fine: bool = False) -> float:
    """How well one thumbnail is a crop, rescale or recolour of the other: best NCC in [-1, 1]."""
    return match_detail(a, b, fine=fine)[0]


@dataclass
class PairCheck:
    """The evidence on one candidate pair: grey-level and edge matches on the fine thumbnails, feature similarity."""

    grey: float
    edge: float
    flat: bool
    similarity: float
    first_is_crop: bool
    kept_fraction: float

    def is_duplicate(self, threshold: float) -> bool:
        """Grey levels match and so do the edges; where there are no edges to match, the features must agree."""
        if self.grey < threshold:
            return False
        return self.similarity >= FLAT_MIN_SIMILARITY if self.flat else self.edge >= EDGE_THRESHOLD


def check_pair(a: np.ndarray, b: np.ndarray, similarity: float) -> PairCheck:
    """Compare two fine thumbnails."""
    grey, first_is_crop, kept = match_detail(a, b, fine=True)
    ea, eb = edges(a), edges(b)
    flat = min(float(ea.std()), float(eb.std())) < FLAT_EDGES
    edge = -1.0 if flat or grey < 0.5 else match_detail(ea, eb, fine=True)[0]
    return PairCheck(grey, edge, flat, similarity, first_is_crop, kept)


def find_duplicates(nb: Neighbours, thumbs: Sequence[np.ndarray | None], pixels: Sequence[int],
                    fine_thumbnail: Callable[[int], np.ndarray | None], *, threshold: float, candidates: int = 15,
                    min_similarity: float = 0.5, doubtful: Collection[int] = ()) -> DuplicateFindings:
    """Verify the ``candidates`` nearest neighbours of every image (feature similarity >= ``min_similarity``) on pixels.

    ``thumbs[i]``: image ``i``'s coarse thumbnail (None: not compared); ``fine_thumbnail(i)`` makes
    its finer one, for the few pairs that pass the coarse test. A pair is a near-duplicate when its
    grey-level match reaches ``threshold`` and :meth:`PairCheck.is_duplicate` agrees. ``pixels[i]``
    (width x height) helps choose which image of a group to keep; an image in ``doubtful`` (its features
    closer to another class) is kept last, so a copy filed in the wrong class is the one flagged.
    """
    n = len(thumbs)
    seen: set[tuple[int, int]] = set()
    pairs: list[tuple[int, int, float]] = []
    cropped: set[int] = set()  # images found to be a crop of another: not kept when the other is there
    coarse: dict[int, _Target] = {}
    fine: dict[int, np.ndarray | None] = {}
    for i in range(n):
        for j, sim in zip(nb.index[i][:candidates].tolist(), nb.similarity[i][:candidates].tolist()):
            pair = (min(i, j), max(i, j))
            if sim < min_similarity or pair in seen:
                continue
            seen.add(pair)
            a, b = thumbs[pair[0]], thumbs[pair[1]]
            if a is None or b is None or float(a.std()) < MIN_CONTRAST or float(b.std()) < MIN_CONTRAST:
                continue
            for k, thumb in ((pair[0], a), (pair[1], b)):
                if k not in coarse:  # (not setdefault: that would build the target every time)
                    coarse[k] = _Target(thumb)
            ta, tb = coarse[pair[0]], coarse[pair[1]]
            if max(_inside(ta, b)[0], _inside(tb, a)[0]) < COARSE_THRESHOLD:
                continue
            for k in pair:
                if k not in fine:
                    fine[k] = fine_thumbnail(k)
            fa, fb = fine[pair[0]], fine[pair[1]]
            if fa is None or fb is None:
                continue
            check = check_pair(fa, fb, sim)
            if check.is_duplicate(threshold):
                pairs.append((pair[0], pair[1], check.grey))
                if check.kept_fraction < 0.97:
                    cropped.add(pair[0] if check.first_is_crop else pair[1])
    return _grouped(n, pairs, pixels, cropped, len(seen), set(doubtful))


def _grouped(n: int, pairs: list[tuple[int, int, float]], pixels: Sequence[int], cropped: set[int],
             checked: int, doubtful: set[int] | None = None) -> DuplicateFindings:
    """Groups around kept images: each image is kept or flagged as a duplicate of a kept image it matched itself.

    Images are taken in order of preference (not a crop of another, not doubtful, most pixels, first); one not yet
    placed is kept, and its matches not yet placed become its duplicates. So a group never chains
    two images that did not match each other.
    """
    findings = DuplicateFindings(group=np.full(n, -1), keeper=np.full(n, -1), score=np.zeros(n),
                                 flagged=np.zeros(n, bool), pairs=pairs, checked_pairs=checked)
    partners: dict[int, dict[int, float]] = {}
    for i, j, s in pairs:
        partners.setdefault(i, {})[j] = s
        partners.setdefault(j, {})[i] = s
    placed: set[int] = set()
    doubtful = doubtful or set()
    for keeper in sorted(partners, key=lambda i: (i in cropped, i in doubtful, -pixels[i], i)):
        if keeper in placed:
            continue
        members = [j for j in sorted(partners[keeper]) if j not in placed]
        if not members:
            continue
        gid = int(findings.group.max()) + 1
        placed.add(keeper)
        findings.group[keeper] = gid
        for j in members:
            placed.add(j)
            findings.group[j] = gid
            findings.keeper[j] = keeper
            findings.flagged[j] = True
            findings.score[j] = partners[keeper][j]
    return findings


#: Defaults shared by ``review`` and the splits: a grey-level match at or above this is a near duplicate...
DEFAULT_MATCH = 0.93
#: ... among each image's this many nearest neighbours by features...
DEFAULT_CANDIDATES = 15
#: ... that are at least this similar (cosine).
MIN_SIMILARITY = 0.5


def crop_pairs(paths: Sequence[Path], features: np.ndarray, *, threshold: float = DEFAULT_MATCH,
               candidates: int = DEFAULT_CANDIDATES, usable: Sequence[bool] | None = None,
               on_thumbnail: Callable[[], None] | None = None) -> list[tuple[int, int]]:
    """Pairs of images that are crops, rescales or recolours of one picture: feature neighbours verified on pixels.

    Splits use it so that such copies never straddle train and test, which perceptual hashes alone allow
    (a 90% crop moves a perceptual hash far). ``features[i]`` embeds ``paths[i]``; rows where ``usable`` is
    False (no features: the file did not decode) are not compared. ``on_thumbnail`` is called once per
    thumbnail made (progress).
    """
    from cnnlab.errors import ImageDecodeError
    from cnnlab.imagedata.neighbours import nearest_neighbours

    n = len(paths)
    ok = list(usable) if usable is not None else [True] * n
    rows = [i for i in range(n) if ok[i]]
    if len(rows) < 2:
        return []

    def thumb(i: int, side: int = THUMB_SIDE) -> np.ndarray | None:
        try:
            return thumbnail(paths[rows[i]], side)
        except ImageDecodeError:
            return None
        finally:
            if on_thumbnail is not None and side == THUMB_SIDE:
                on_thumbnail()

    nb = nearest_neighbours(features[rows], min(candidates, len(rows) - 1))
    thumbs = [thumb(i) for i in range(len(rows))]
    pixels = [0 if t is None else int(t.size) for t in thumbs]
    found = find_duplicates(nb, thumbs, pixels, lambda j: thumb(j, FINE_SIDE), threshold=threshold,
                            candidates=candidates, min_similarity=MIN_SIMILARITY)
    return [(rows[a], rows[b]) for a, b, _ in found.pairs]
