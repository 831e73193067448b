"""The score stage: committed embeddings + the manifest -> the tidy scores table (design section 7).

One module per task, each with one entry function returning ``list[ScoreRow]``: ``corrembed``,
``rankability``, ``retrieval``, ``prototypes``, ``modality_gap``. Shared pieces: ``tags`` (weighted tag
vectors), ``bootstrap`` (intervals), ``context`` (what a task receives), ``settings`` (ScoreSettings),
``schema`` (the output contract). ``job.score_run`` ties them together. Nothing is imported here, so
reading the schema (as the report does) never loads the engine.
"""
