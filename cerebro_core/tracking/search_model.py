"""The search model in MLflow: the ``cerebro-search`` pyfunc logged as *model from code*
(:mod:`.search_pyfunc`, no pickle; its one artifact is the manifest of the index's parts), with a
declared signature and pinned requirements, and loaded back for a query as a user would."""

from __future__ import annotations

from pathlib import Path

PYFUNC_CODE = Path(__file__).with_name("search_pyfunc.py")
CORE_DIR = Path(__file__).resolve().parents[1]  # cerebro_core travels with the model (code_paths)
REQUIREMENTS = ("torch", "torchvision", "open_clip_torch", "faiss-cpu", "pyarrow", "pillow", "pandas", "mlflow",
                "pydantic", "fsspec", "webdataset", "av")


def log_search_model(manifest: Path, filter_params: tuple[str, ...]) -> str:
    """Log the pyfunc in the active run (its artifact: ``manifest``); its ``models:/m-…`` URI."""
    import mlflow
    import pandas as pd

    info = mlflow.pyfunc.log_model(
        name="search",
        python_model=str(PYFUNC_CODE),
        artifacts={"manifest": str(manifest)},
        code_paths=[str(CORE_DIR)],
        signature=_signature(filter_params),
        input_example=(pd.DataFrame({"query": ["a red fox leaping into snow"]}), {"k": 3}),
        pip_requirements=_requirements(),
    )
    return info.model_uri


def smoke_query(model_uri: str, query: str = "an animal") -> int:
    """How many hits the model at ``model_uri`` answers to ``query`` (k 3), loaded from the registry."""
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(model_uri)
    return len(model.predict(pd.DataFrame({"query": [query]}), params={"k": 3}))


def _signature(filter_params: tuple[str, ...]):
    """Declared, not inferred: ids and ranks are longs, and every filter is an optional string."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    out = [ColSpec("string", "query"), ColSpec("long", "rank"), ColSpec("long", "id"), ColSpec("double", "score"),
           ColSpec("string", "uri"), ColSpec("string", "source"), ColSpec("string", "media_type"),
           ColSpec("double", "video_ts", required=False)]
    params = [ParamSpec("k", "long", 10)] + [ParamSpec(n, "string", "") for n in filter_params]
    return ModelSignature(inputs=Schema([ColSpec("string", "query")]), outputs=Schema(out),
                          params=ParamSchema(params))


def _requirements() -> list[str]:
    from importlib.metadata import version

    reqs = []
    for dist in REQUIREMENTS:
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except Exception:
            pass
    return reqs
