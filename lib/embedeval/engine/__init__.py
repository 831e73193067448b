"""The scoring engine: exact reductions over the N x N (or Nq x Ng) similarity problem, tile by tile.

- ``gram``: all-pairs and per-anchor Pearson of cosine similarities via small Gram matrices (no tiles).
- ``knn``: exact blockwise top-k, per-anchor neighbourhood Pearson (corr_knn) and its random control.
- ``ranks``: exact ranks of true matches (R@K, median rank, mAP) without sorting the gallery.
- ``kmeans``: distributed deterministic Lloyd with k-means++ / k-means|| seeding.
- ``pairs``: pair enumeration and sampling, the tiled all-pairs Pearson.
- ``runner``: runs block tasks in-process (``LocalRunner``) or on Ray (``RayRunner``), with timing.
- ``sums``, ``topk``: the mergeable reduction states; ``exact``: canonical float64 scores;
  ``validate``: input checks.

Memory per task is O(B^2 + B d) for block size B; no N x N matrix is ever formed.
"""
