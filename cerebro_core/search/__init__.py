"""The query side: opening a published search version (:mod:`.local_copy`), searching it
(:mod:`.searcher`), its filters (:mod:`.filters`), the item columns they run on (:mod:`.columns`)
and its rows (:mod:`.rows`). Used by ``cerebro search``, ``cerebro serve`` and the MLflow pyfunc;
the index stage (:mod:`cerebro_core.index`) builds and publishes what it opens."""
