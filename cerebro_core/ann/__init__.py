"""Approximate nearest-neighbour indexes over CLIP embeddings, on FAISS.

- :mod:`.base`: the protocol every kind implements, and the :class:`~.base.Index` handle;
- one file per kind (:mod:`.flat`, :mod:`.hnsw`, :mod:`.ivf`, :mod:`.ivfpq`, :mod:`.ivfpq_disk`
  with its structures in :mod:`.disk`), registered by name in :mod:`.kinds`;
- :mod:`.tune`: build and tune to a recall target; :mod:`.sharded`: N shards as one handle;
  :mod:`.incremental`: adding, and when to rebuild; :mod:`.store`: what the index stage builds
  and loads.

It knows nothing of stages, bundles' rows or MLflow: the index stage (:mod:`cerebro_core.index`)
builds with it and the query side (:mod:`cerebro_core.search`) loads with it.
"""
