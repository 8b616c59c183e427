"""Remote sources (hf://, s3://, https://): fetched once per pipeline, verified, then checked.

    refinery-train fetch --config fetch.json     # a FetchRun (refinery/api/run.py)

`fetch.py` fetches every remote source of a pipeline into `<pipeline>/sources/<key>/files/`
(`store.py`: a marker written last makes a folder complete; a complete folder is never fetched
again), one module per kind of store (`s3.py`, `hub.py`, `https.py`), then `preflight.py` checks
that every stage's inputs exist and have the columns the stage reads.
"""
