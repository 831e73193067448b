"""Metric definitions (design section 7) computed from the engine's exact reductions.

- ``retrieval``: Recall@K, median/mean rank, AP / mAP@K and P@K (standard and zs-sbir conventions).
- ``clustering``: NMI, ARI, purity from a sparse contingency table.
- ``correlation``: Spearman over all pairs, exact or over a stated seeded sample.
- ``per_query``: per-query values that keep excluded queries counted, not scored 0.
"""
