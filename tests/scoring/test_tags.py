"""Weighted tag vectors against a brute-force construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from embedeval.scoring.tags import TagError, build_tag_vectors, informative_weights, presence_matrix

TAGS = [["red", "circle"], ["red", "square", "small"], ["blue", "circle", "small"], None, ["red", "red", "circle"]]
CATS = {"red": "colour", "blue": "colour", "circle": "shape", "square": "shape"}   # 'small' is uncategorised


def test_entropy_weights_match_binary_entropy() -> None:
    presence, vocab = presence_matrix(TAGS)
    w = dict(zip(vocab, informative_weights(presence, "entropy")))
    n = 4  # items with at least one tag
    for tag, df in {"red": 3, "blue": 1, "circle": 3, "square": 1, "small": 2}.items():
        p = df / n
        assert w[tag] == pytest.approx(-(p * math.log2(p) + (1 - p) * math.log2(1 - p)))
    assert w["small"] == pytest.approx(1.0)


def test_tag_on_every_item_weighs_zero() -> None:
    tags = [["x", "a"], ["x"], ["x", "b"]]
    for method in ("entropy", "idf"):
        presence, vocab = presence_matrix(tags)
        w = dict(zip(vocab, informative_weights(presence, method)))
        assert w["x"] == 0.0 and w["a"] > 0


def test_idf_weights() -> None:
    presence, vocab = presence_matrix(TAGS)
    w = dict(zip(vocab, informative_weights(presence, "idf")))
    assert w["blue"] == pytest.approx(math.log(4 / 1))
    assert w["red"] == pytest.approx(math.log(4 / 3))


def test_vectors_brute_force_with_category_weights() -> None:
    weights = {"colour": 2.0, "shape": 0.5, "uncategorised": 1.0}
    out = {tv.target: tv for tv in build_tag_vectors(TAGS, CATS, weights)}
    assert set(out) == {"all", "colour", "shape", "uncategorised"}
    all_tv = out["all"]
    dense = np.asarray(all_tv.matrix.todense())
    for i, item in enumerate(TAGS):
        for j, tag in enumerate(all_tv.tags):
            expected = weights[CATS.get(tag, "uncategorised")] if item and tag in item else 0.0
            assert dense[i, j] == expected
    colour = out["colour"]
    assert colour.tags == ["blue", "red"]
    assert list(colour.has_vector) == [True, True, True, False, True]
    # items without tags in a category have no vector there
    assert list(out["uncategorised"].has_vector) == [False, True, True, False, False]
    unit = all_tv.unit_rows(np.array([0, 1]))
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0)
    with pytest.raises(TagError, match="unit_rows"):
        all_tv.unit_rows(np.array([3]))


def test_missing_category_weight_is_a_clear_error() -> None:
    with pytest.raises(TagError, match=r"no weight for categories \['uncategorised'\]"):
        build_tag_vectors(TAGS, CATS, {"colour": 1.0, "shape": 1.0})
    with pytest.raises(TagError, match=">= 0"):
        build_tag_vectors(TAGS, CATS, {"colour": -1.0, "shape": 1.0, "uncategorised": 1.0})


def test_without_categories_only_all() -> None:
    out = build_tag_vectors(TAGS)
    assert [tv.target for tv in out] == ["all"]
