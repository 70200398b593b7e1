"""Tests of cnnlab.metrics against scikit-learn, statsmodels and hand-checked cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import precision_score, recall_score, top_k_accuracy_score
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.proportion import proportion_confint

from cnnlab.metrics import (
    AccuracySummary,
    ambiguous_outputs,
    compare_models,
    confusion_matrix,
    expected_calibration_error,
    mapped_mask,
    mcnemar_exact,
    mean_confidence,
    overlapping,
    per_class_report,
    predicted_user_class,
    summarize,
    topk_hits,
    wilson_interval,
)

# ImageNet-style mapping: cat accepts five outputs, dog two, "fox" is unmapped.
CAT = {281, 282, 283, 284, 285}
DOG = {151, 152}
ACCEPTED = [CAT, DOG, set()]


def _random_scores(n: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.random((n, c))
    y = rng.integers(0, c, size=n)
    return scores, y


def _paired(both: int, a_only: int, b_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([True] * both + [True] * a_only + [False] * b_only + [False] * neither)
    b = np.array([True] * both + [False] * a_only + [True] * b_only + [False] * neither)
    return a, b


# --------------------------------------------------------------------------------------------
# topk_hits
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_topk_hits_matches_sklearn_with_singleton_sets(k: int) -> None:
    n, c = 300, 8
    scores, y = _random_scores(n, c, seed=k)
    topk = np.argsort(-scores, axis=1)[:, :5]
    accepted = [{i} for i in range(c)]
    hits = topk_hits(topk, y, accepted, k)
    assert hits.dtype == np.bool_ and hits.shape == (n,)
    expected = top_k_accuracy_score(y, scores, k=k, labels=np.arange(c), normalize=False)
    assert int(hits.sum()) == int(expected)
    assert hits.mean() == pytest.approx(top_k_accuracy_score(y, scores, k=k, labels=np.arange(c)))


def test_topk_hits_with_several_accepted_indices_and_unmapped_class() -> None:
    topk = np.array(
        [
            [283, 151, 7],  # cat, top-1 in cat set
            [151, 285, 7],  # cat, cat output only at rank 2
            [999, 500, 152],  # dog, dog output at rank 3 (999 lies beyond every set)
            [281, 282, 283],  # dog, only cat outputs
            [281, 151, 0],  # fox: unmapped, can never hit
        ]
    )
    y = np.array([0, 0, 1, 1, 2])
    assert topk_hits(topk, y, ACCEPTED, 1).tolist() == [True, False, False, False, False]
    assert topk_hits(topk, y, ACCEPTED, 2).tolist() == [True, True, False, False, False]
    assert topk_hits(topk, y, ACCEPTED, 3).tolist() == [True, True, True, False, False]


def test_topk_hits_accepts_ranges_and_lists() -> None:
    topk = np.array([[282], [10]])
    assert topk_hits(topk, [0, 1], [range(281, 286), [10]], 1).tolist() == [True, True]


def test_topk_hits_empty_input() -> None:
    assert topk_hits(np.zeros((0, 5), dtype=int), [], ACCEPTED, 5).shape == (0,)


@pytest.mark.parametrize("k", [0, 4])
def test_topk_hits_rejects_k_out_of_range(k: int) -> None:
    with pytest.raises(ValueError, match="k must be between"):
        topk_hits(np.array([[1, 2, 3]]), [0], ACCEPTED, k)


def test_topk_hits_rejects_bad_labels_and_shapes() -> None:
    with pytest.raises(ValueError, match="outside the allowed range"):
        topk_hits(np.array([[1, 2, 3]]), [3], ACCEPTED, 1)
    with pytest.raises(ValueError, match="one entry per sample"):
        topk_hits(np.array([[1, 2, 3]]), [0, 1], ACCEPTED, 1)
    with pytest.raises(TypeError):
        topk_hits(np.array([[1.5, 2.0]]), [0], ACCEPTED, 1)


def test_mapped_mask_flags_unmapped_classes() -> None:
    assert mapped_mask([0, 2, 1, 2], ACCEPTED).tolist() == [True, False, True, False]


# --------------------------------------------------------------------------------------------
# predicted_user_class
# --------------------------------------------------------------------------------------------


def test_predicted_user_class_maps_to_owner_or_other() -> None:
    top1 = np.array([284, 152, 0, 999, 281])
    assert predicted_user_class(top1, ACCEPTED).tolist() == [0, 1, 3, 3, 0]
    assert predicted_user_class(top1, ACCEPTED, other=-1).tolist() == [0, 1, -1, -1, 0]


def test_predicted_user_class_ambiguous_index_goes_to_other() -> None:
    accepted = [{1, 2}, {2, 3}]  # output 2 is claimed by both classes
    assert ambiguous_outputs(accepted) == {2: (0, 1)}
    assert ambiguous_outputs(ACCEPTED) == {}
    assert predicted_user_class([1, 2, 3], accepted).tolist() == [0, 2, 1]
    # topk_hits, by contrast, credits the ambiguous output to both classes
    assert topk_hits(np.array([[2], [2]]), [0, 1], accepted, 1).tolist() == [True, True]


def test_predicted_user_class_rejects_real_class_as_other_and_2d_input() -> None:
    with pytest.raises(ValueError, match="real class id"):
        predicted_user_class([1], ACCEPTED, other=1)
    with pytest.raises(ValueError, match="topk"):
        predicted_user_class(np.array([[1, 2]]), ACCEPTED)


def test_fine_tuned_mapping_is_identity_and_consistent_with_hits() -> None:
    scores, y = _random_scores(120, 6, seed=11)
    topk = np.argsort(-scores, axis=1)[:, :3]
    accepted = [{c} for c in range(6)]
    pred = predicted_user_class(topk[:, 0], accepted)
    np.testing.assert_array_equal(pred, topk[:, 0])
    m = confusion_matrix(y, pred, 6)
    assert np.trace(m) == topk_hits(topk, y, accepted, 1).sum()


# --------------------------------------------------------------------------------------------
# confusion matrix and per-class report
# --------------------------------------------------------------------------------------------


def test_confusion_matrix_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    c = 5
    y = rng.integers(0, c, 400)
    y_pred = rng.integers(0, c + 1, 400)  # c = "other"
    m = confusion_matrix(y, y_pred, c)
    assert m.shape == (c, c + 1)
    expected = sk_confusion_matrix(y, y_pred, labels=np.arange(c + 1))[:c]
    np.testing.assert_array_equal(m, expected)
    np.testing.assert_array_equal(m.sum(axis=1), np.bincount(y, minlength=c))


def test_confusion_matrix_other_column_by_hand() -> None:
    top1 = np.array([283, 999, 151, 282, 152, 7])
    y = np.array([0, 0, 1, 1, 1, 1])
    pred = predicted_user_class(top1, ACCEPTED[:2])
    m = confusion_matrix(y, pred, 2)
    np.testing.assert_array_equal(m, [[1, 0, 1], [1, 2, 1]])


def test_confusion_matrix_rejects_out_of_range_prediction() -> None:
    with pytest.raises(ValueError, match="y_pred"):
        confusion_matrix([0, 1], [0, 3], 2)


def test_per_class_report_matches_sklearn_including_nan_cases() -> None:
    names = ["cat", "dog", "fox", "owl"]
    # fox is never predicted (precision nan); owl has no samples (recall nan); 4 = "other".
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 0, 1])
    y_pred = np.array([0, 1, 4, 1, 0, 4, 0, 1, 3, 1])
    report = per_class_report(y, y_pred, names)
    labels = np.arange(len(names))
    precision = precision_score(y, y_pred, labels=labels, average=None, zero_division=np.nan)
    recall = recall_score(y, y_pred, labels=labels, average=None, zero_division=np.nan)
    np.testing.assert_allclose([r.precision for r in report], precision, equal_nan=True)
    np.testing.assert_allclose([r.recall for r in report], recall, equal_nan=True)
    np.testing.assert_allclose([r.accuracy for r in report], recall, equal_nan=True)
    assert [r.name for r in report] == names
    assert [r.support for r in report] == [4, 3, 3, 0]
    assert [r.correct for r in report] == [1, 2, 0, 0]
    assert [r.predicted for r in report] == [3, 4, 0, 1]
    assert math.isnan(report[2].precision) and math.isnan(report[3].recall)
    assert report[0].precision == pytest.approx(1 / 3)


def test_class_metrics_to_dict_is_strict_json() -> None:
    report = per_class_report([0, 0], [0, 2], ["cat", "dog"])
    d = report[1].to_dict()
    assert d == {
        "name": "dog",
        "support": 0,
        "correct": 0,
        "predicted": 0,
        "accuracy": None,
        "precision": None,
        "recall": None,
    }
    assert report[0].to_dict()["recall"] == 0.5
    json.dumps([r.to_dict() for r in report], allow_nan=False)


# --------------------------------------------------------------------------------------------
# Wilson interval
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize(
    ("successes", "n"), [(0, 1), (1, 1), (0, 20), (20, 20), (3, 7), (39, 50), (36, 50), (512, 1000)]
)
def test_wilson_matches_statsmodels(successes: int, n: int, confidence: float) -> None:
    low, high = wilson_interval(successes, n, confidence)
    exp_low, exp_high = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    assert low == pytest.approx(exp_low, abs=1e-12)
    assert high == pytest.approx(exp_high, abs=1e-12)
    assert 0.0 <= low <= successes / n <= high <= 1.0


def test_wilson_known_value_39_of_50() -> None:
    # hand computation: centre 0.760027, half-width 0.112438 at z = 1.959964
    low, high = wilson_interval(39, 50)
    assert low == pytest.approx(0.64758, abs=1e-5)
    assert high == pytest.approx(0.87246, abs=1e-5)


def test_wilson_edge_cases() -> None:
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 1.0
    narrow, wide = wilson_interval(39, 50, 0.9), wilson_interval(39, 50, 0.99)
    assert wide[0] < narrow[0] and narrow[1] < wide[1]
    for bad in [(5, 4), (-1, 4), (1, -1)]:
        with pytest.raises(ValueError):
            wilson_interval(*bad)
    with pytest.raises(ValueError):
        wilson_interval(1, 2, confidence=1.0)


def test_lab_078_vs_072_on_50_images_overlap() -> None:
    ci_a, ci_b = wilson_interval(39, 50), wilson_interval(36, 50)
    assert overlapping(ci_a, ci_b) and overlapping(ci_b, ci_a)


def test_overlapping_detects_disjoint_and_touching_intervals() -> None:
    assert not overlapping(wilson_interval(48, 50), wilson_interval(20, 50))
    assert not overlapping((0.1, 0.2), (0.3, 0.4))
    assert overlapping((0.1, 0.3), (0.3, 0.4))  # closed intervals share 0.3
    assert overlapping((0.1, 0.9), (0.4, 0.5))  # containment
    with pytest.raises(ValueError, match="nan"):
        overlapping((math.nan, math.nan), (0.1, 0.2))
    with pytest.raises(ValueError, match="low > high"):
        overlapping((0.5, 0.1), (0.1, 0.2))


# --------------------------------------------------------------------------------------------
# McNemar
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("both", "a_only", "b_only", "neither"),
    [(33, 6, 3, 8), (10, 12, 1, 2), (5, 0, 7, 1), (40, 20, 20, 0), (3, 1, 0, 0), (0, 25, 14, 11)],
)
def test_mcnemar_matches_statsmodels(both: int, a_only: int, b_only: int, neither: int) -> None:
    a, b = _paired(both, a_only, b_only, neither)
    result = mcnemar_exact(a, b)
    assert (result.b, result.c, result.n) == (a_only, b_only, both + a_only + b_only + neither)
    expected = sm_mcnemar([[both, a_only], [b_only, neither]], exact=True).pvalue
    assert result.p_value == pytest.approx(expected, rel=1e-10)


def test_mcnemar_no_disagreement_gives_p_one() -> None:
    a, b = _paired(30, 0, 0, 20)
    result = mcnemar_exact(a, b)
    assert result.p_value == 1.0 and result.discordant == 0
    assert not result.significant()
    assert mcnemar_exact([], []).p_value == 1.0


def test_mcnemar_significant_uses_alpha() -> None:
    result = mcnemar_exact(*_paired(0, 10, 0, 0))
    assert result.p_value == pytest.approx(2 * 0.5**10)  # 0.00195
    assert result.significant() and result.significant(0.01)
    assert not result.significant(0.001)
    # swapping the models swaps b and c but not p
    swapped = mcnemar_exact(*reversed(_paired(0, 10, 0, 0)))
    assert (swapped.b, swapped.c) == (0, 10) and swapped.p_value == result.p_value


def test_mcnemar_accepts_01_integers_and_rejects_mismatch() -> None:
    assert mcnemar_exact([1, 0, 1], [0, 0, 1]).b == 1
    with pytest.raises(ValueError, match="one entry per sample"):
        mcnemar_exact([True], [True, False])
    with pytest.raises(TypeError):
        mcnemar_exact([0.5], [1.0])


# --------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------


def _reference_ece(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    """The loop of Guo et al. (2017): bins (lower, upper], weighted by bin size."""
    edges = np.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for lower, upper in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lower) & (conf <= upper)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return ece


def test_ece_perfectly_calibrated_toy_is_zero() -> None:
    conf = np.full(10, 0.8)
    correct = np.array([True] * 8 + [False] * 2)
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0, abs=1e-12)
    # two bins, each calibrated on its own
    conf2 = np.array([0.8] * 5 + [0.4] * 5)
    correct2 = np.array([1, 1, 1, 1, 0, 1, 1, 0, 0, 0], dtype=bool)
    assert expected_calibration_error(conf2, correct2) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0


def test_ece_known_miscalibrated_cases() -> None:
    # 90% confident, right half the time
    assert expected_calibration_error(np.full(10, 0.9), [True, False] * 5) == pytest.approx(0.4)
    # two bins: |0.5 - 0.95| * 1/2 + |0 - 0.25| * 1/2 = 0.35
    ece = expected_calibration_error([0.95, 0.95, 0.25, 0.25], [True, False, False, False])
    assert ece == pytest.approx(0.35)
    # one bin: |accuracy - mean confidence| = |0.5 - 0.6|
    assert expected_calibration_error([0.95, 0.25], [True, False], n_bins=1) == pytest.approx(0.1)


def test_ece_bin_edge_goes_to_lower_bin() -> None:
    # with 5 bins, 0.2 falls in (0, 0.2] and 0.3 in (0.2, 0.4]: (0.8 + 0.3) / 2 = 0.55
    # (were 0.2 in the upper bin with 0.3 it would be |0.5 - 0.25| = 0.25)
    assert expected_calibration_error([0.2, 0.3], [True, False], n_bins=5) == pytest.approx(0.55)


@pytest.mark.parametrize("n_bins", [1, 5, 10, 15, 20])
def test_ece_matches_reference_loop(n_bins: int) -> None:
    rng = np.random.default_rng(n_bins)
    conf = rng.uniform(0.01, 1.0, 500)
    conf[:20] = np.linspace(0, 1, n_bins + 1)[1:].repeat(20)[:20]  # some values on bin edges
    correct = rng.random(500) < conf**2
    ece = expected_calibration_error(conf, correct, n_bins)
    assert ece == pytest.approx(_reference_ece(conf, correct, n_bins), abs=1e-12)
    assert 0.0 < ece < 1.0


def test_ece_and_mean_confidence_edge_cases() -> None:
    assert math.isnan(expected_calibration_error([], []))
    assert math.isnan(mean_confidence([]))
    assert mean_confidence([0.2, 0.4, 0.9]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        expected_calibration_error([1.2], [True])
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        mean_confidence([math.nan])
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error([0.5], [True], n_bins=0)


# --------------------------------------------------------------------------------------------
# summarize
# --------------------------------------------------------------------------------------------


def _toy_predictions() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    topk = np.array(
        [
            [281, 1, 2, 3, 4],  # cat, top-1 hit
            [1, 2, 3, 4, 285],  # cat, top-5 hit only
            [1, 2, 3, 4, 5],  # cat, miss
            [152, 1, 2, 3, 4],  # dog, top-1 hit
        ]
    )
    topk_prob = np.array(
        [
            [0.9, 0.05, 0.02, 0.02, 0.01],
            [0.6, 0.2, 0.1, 0.05, 0.05],
            [0.5, 0.2, 0.1, 0.1, 0.1],
            [0.8, 0.1, 0.05, 0.03, 0.02],
        ]
    )
    return topk, topk_prob, np.array([0, 0, 0, 1])


def test_summarize_by_hand() -> None:
    topk, topk_prob, y = _toy_predictions()
    s = summarize(topk, topk_prob, y, ACCEPTED)
    assert isinstance(s, AccuracySummary)
    assert s.n == 4
    assert s.hits == {1: 2, 5: 3}
    assert s.top1 == 0.5 and s.top5 == 0.75
    assert s.ci[1] == pytest.approx(wilson_interval(2, 4))
    assert s.ci[5] == pytest.approx(wilson_interval(3, 4))
    assert s.mean_confidence == pytest.approx(0.7)
    # 15 bins: 0.9 hit alone; 0.8 hit alone; 0.6 miss; 0.5 miss -> (0.1 + 0.2 + 0.6 + 0.5) / 4
    assert s.ece == pytest.approx(0.35)
    d = s.to_dict()
    assert d["top1"] == 0.5 and d["top5_hits"] == 3 and d["ece"] == pytest.approx(0.35)
    assert d["top1_ci"] == pytest.approx(list(wilson_interval(2, 4)))
    json.dumps(d, allow_nan=False)


def test_summarize_counts_unmapped_as_miss_and_mask_removes_them() -> None:
    topk, topk_prob, y = _toy_predictions()
    topk = np.vstack([topk, [[281, 152, 1, 2, 3]]])
    topk_prob = np.vstack([topk_prob, [[0.99, 0.01, 0, 0, 0]]])
    y = np.append(y, 2)  # fox: unmapped
    s = summarize(topk, topk_prob, y, ACCEPTED)
    assert s.n == 5 and s.hits == {1: 2, 5: 3}
    keep = mapped_mask(y, ACCEPTED)
    s2 = summarize(topk[keep], topk_prob[keep], y[keep], ACCEPTED)
    assert s2.n == 4 and s2.top1 == 0.5


def test_summarize_empty_and_custom_ks() -> None:
    s = summarize(np.zeros((0, 5), dtype=int), np.zeros((0, 5)), [], ACCEPTED)
    assert s.n == 0 and math.isnan(s.top1) and math.isnan(s.ece)
    assert s.to_dict()["top1_ci"] == [None, None]
    json.dumps(s.to_dict(), allow_nan=False)
    topk, topk_prob, y = _toy_predictions()
    s3 = summarize(topk[:, :3], topk_prob[:, :3], y, ACCEPTED, ks=(1, 3))
    assert s3.accuracy == {1: 0.5, 3: 0.5}
    with pytest.raises(KeyError, match="top-5"):
        _ = s3.top5
    with pytest.raises(ValueError, match="k must be between"):
        summarize(topk[:, :3], topk_prob[:, :3], y, ACCEPTED)  # default ks=(1, 5)
    with pytest.raises(ValueError, match="shape"):
        summarize(topk, topk_prob[:, :3], y, ACCEPTED)


# --------------------------------------------------------------------------------------------
# compare_models
# --------------------------------------------------------------------------------------------


def test_compare_models_not_significant_verdict() -> None:
    resnet, alexnet = _paired(33, 6, 3, 8)  # 39 vs 36 of 50
    [cmp] = compare_models({"resnet50": resnet, "alexnet": alexnet})
    # p = 2 * P(Bin(9, 1/2) <= 3) = 260 / 512
    assert cmp.mcnemar.p_value == pytest.approx(260 / 512)
    assert cmp.verdict == (
        "resnet50 vs alexnet: 39 vs 36 of 50 top-1 hits; "
        "McNemar exact p=0.51 — not a significant difference at 5%"
    )
    assert (cmp.hits_a, cmp.hits_b, cmp.n) == (39, 36, 50)
    assert cmp.cis_overlap and not cmp.significant and cmp.better is None
    json.dumps(cmp.to_dict(), allow_nan=False)


def test_compare_models_significant_verdict_names_the_better_model() -> None:
    a, b = _paired(10, 1, 12, 2)  # 11 vs 22 of 25; p = 2 * 14 / 8192
    [cmp] = compare_models({"alexnet": a, "resnet50": b})
    assert cmp.significant and cmp.better == "resnet50"
    assert cmp.verdict == (
        "alexnet vs resnet50: 11 vs 22 of 25 top-1 hits; "
        "McNemar exact p=0.0034 — significant difference at 5% (resnet50 is better)"
    )
    [strict] = compare_models({"alexnet": a, "resnet50": b}, alpha=0.001)
    assert not strict.significant and "not a significant difference at 0.1%" in strict.verdict


def test_compare_models_all_pairs_in_order_and_validation() -> None:
    rng = np.random.default_rng(5)
    hits = {name: rng.random(40) < 0.7 for name in ["a", "b", "c"]}
    result = compare_models(hits)
    assert [(r.model_a, r.model_b) for r in result] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert compare_models({"only": hits["a"]}) == []
    [same] = compare_models({"x": hits["a"], "y": hits["a"]})
    assert same.mcnemar.p_value == 1.0 and "never disagree" in same.verdict
    with pytest.raises(ValueError, match="one entry per sample"):
        compare_models({"a": hits["a"], "b": hits["b"][:10]})
