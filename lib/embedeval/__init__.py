"""embedeval: which embedding model's notion of "similar" matches human judgement on your catalogue.

Data flows one way, each arrow a Parquet contract (see docs in README.md):
manifest -> embeddings -> scores -> report.
"""

__version__ = "0.1.0"
