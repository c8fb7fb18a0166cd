"""The ``cerebro-search`` MLflow pyfunc model, logged as *model from code* (no pickle).

Input: a DataFrame with a ``query`` column (or a list of strings); params ``k`` (1..1000) and the
filters of :class:`cerebro_core.search.filters.Filters` as strings ("" = unset; ``species``
comma-separated). Output: one row per hit with the query, its rank, the score and the media
metadata (id, uri, source, media_type, video_ts, species, taken_at, camera, ...).
"""

from typing import Optional

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class CerebroSearchModel(PythonModel):
    def load_context(self, context):
        from cerebro_core.search.local_copy import bundle_from_artifacts
        from cerebro_core.search.searcher import Searcher

        # a version's artifact is the manifest of its parts (versions before: the bundle itself)
        self.searcher = Searcher(bundle_from_artifacts(context.artifacts))

    def predict(self, context, model_input: pd.DataFrame, params: Optional[dict] = None) -> pd.DataFrame:
        # a DataFrame hint: MLflow validates against the signature declared in publish.py
        from cerebro_core.search.filters import QueryError

        try:
            return self._predict(model_input, params)
        except (QueryError, KeyError, ValueError) as exc:  # the message, not a stack trace (a 400)
            from cerebro_core import tracking

            msg = f"missing column {exc}: send a 'query' column" if isinstance(exc, KeyError) else str(exc)
            raise tracking.invalid_parameter(msg) from None

    def _predict(self, model_input, params: Optional[dict]) -> pd.DataFrame:
        from cerebro_core.search.filters import Filters, parse_filters

        params = dict(params or {})
        k = params.pop("k", 10)
        try:
            k = int(k)
        except (TypeError, ValueError):
            raise ValueError(f"k: not an integer: {str(k)[:200]!r}") from None
        species = [x.strip() for x in str(params.pop("species", "") or "").split(",") if x.strip()]
        f = parse_filters(species=species, **{n: params.get(n) for n in Filters.model_fields if n != "species"})
        if isinstance(model_input, pd.DataFrame):
            queries = [str(q) for q in model_input["query"].tolist()]
        else:
            queries = [str(q) for q in model_input]
        rows = []
        for q in queries:
            for rank, hit in enumerate(self.searcher.search(q, k=k, filters=f)):
                rows.append({"query": q, "rank": rank, **hit})
        columns = ["query", "rank", "id", "score", "uri", "source", "media_type", "video_ts"]
        return pd.DataFrame(rows, columns=None if rows else columns)


mlflow.models.set_model(CerebroSearchModel())
