"""The review routes: people verify what the model guessed.

POST /verify   JSON ``{"items": [{"id": 3, "label": "deer"}, …], "reviewer": "ana"}``: one batch,
               stored as one file (:mod:`cerebro_core.review.store`); answered once it is in place,
               with the items as hits now show them. A label is a species of the vocabulary or
               ``empty`` / ``person`` / ``unknown``. Refused: 403 on a server started with
               ``serve.read_only``, 415 unless the body is JSON (a cross-site form cannot post
               here), 404 for an id not indexed, 400 for an unknown label or an empty batch (each naming the item);
               with ``serve.token`` set the token is needed, as for every route.
GET  /review?q=&k=&<filters>  the unverified items whose verification teaches the model most
               (:mod:`cerebro_core.review.queue`), among a query's matches when ``q`` is given.

:class:`Reviews` keeps the served searcher in step with the verifications in the storage root:
after a write at once, others' writes (another server, `cerebro review import`) within
``refresh_s``, and a newly loaded version (a reindex) before it answers.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from cerebro_core.search.filters import Filters, check_query
from cerebro_core.review.queue import POOL, apply, review_queue
from cerebro_core.review.store import Log, ReviewError, Verification, check_label, check_reviewer, now
from cerebro_core.storage import Storage

log = logging.getLogger("cerebro.serve")


class Reviews:
    def __init__(self, root: str, storage: Optional[Storage] = None, refresh_s: float = 5.0):
        self.log = Log(root, storage)
        self.refresh_s, self.generation = refresh_s, 0
        self._checked = float("-inf")
        self._lock = threading.Lock()

    def sync(self, searcher):
        """``searcher`` with the latest verifications applied."""
        with self._lock:
            if time.monotonic() - self._checked >= self.refresh_s:
                self._checked = time.monotonic()
                try:
                    if self.log.refresh():
                        self.generation += 1
                except Exception as exc:  # storage unreachable, a file edited by hand: serve what we have
                    log.warning("verifications not refreshed: %s", exc)
            if getattr(searcher, "review_generation", None) != self.generation:
                apply(searcher, self.log.latest())
                searcher.review_generation = self.generation
        return searcher

    def write(self, batch: list[Verification]) -> str:
        with self._lock:
            url = self.log.add(batch)
            self.generation += 1
        return url


class Verify(BaseModel):
    model_config = ConfigDict(extra="forbid")

    class Item(BaseModel):
        model_config = ConfigDict(extra="forbid")
        id: int
        label: str = Field(max_length=200)

    items: list[Item] = Field(min_length=1, max_length=1000)
    reviewer: Optional[str] = Field(None, max_length=100)


def add_review_routes(app: FastAPI, holder, reviews: Reviews, read_only: bool, filters: Callable,
                      hit: Callable[[dict], dict], max_query_chars: int) -> None:
    def current():
        return reviews.sync(holder.searcher)

    def writable(request: Request) -> None:  # a dependency: checked before the body is read
        if read_only:
            raise HTTPException(status_code=403, detail="this server is read-only (serve.read_only): "
                                                        "verifications are not taken")
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise HTTPException(status_code=415, detail="send verifications as application/json")

    @app.post("/verify", dependencies=[Depends(writable)])
    def verify(body: Verify) -> dict:
        s = current()
        try:
            reviewer = check_reviewer(body.reviewer)
        except ReviewError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        batch = []
        for n, it in enumerate(body.items):
            if not 0 <= it.id < len(s.rows):
                raise HTTPException(status_code=404, detail=f"items[{n}].id: no indexed item {it.id}")
            row = s.rows[it.id]
            try:
                label = check_label(it.label, s.columns.vocabulary)
            except ReviewError as exc:
                raise HTTPException(status_code=400, detail=f"items[{n}].{exc}") from None
            if not row.get("sha256"):
                raise HTTPException(status_code=400, detail=f"items[{n}]: item {it.id} was indexed without a "
                                                            "content hash; reindex it to verify it")
            batch.append(Verification(sha256=row["sha256"], label=label, time=now(), reviewer=reviewer,
                                      uri=hit(s.hit(it.id, 0.0))["uri"]))
        reviews.write(batch)
        s = current()
        return {"written": len(batch), "results": [hit(s.hit(it.id, 0.0)) for it in body.items]}

    @app.get("/review")
    def review(q: str = Query("", max_length=100_000), k: int = Query(24), f: Filters = Depends(filters)) -> dict:
        s = current()
        f = s._check(k, None, None, f)
        ranked = None
        if q:
            check_query(q, k, max_chars=max_query_chars)
            ranked = [i for i, _, _ in s.ranked(s.encode_text(q), min(POOL, s.matches(f)), f)]
        hits = review_queue(s, k, s.columns.mask(f), ranked)
        return {"query": q, "k": k, "version": holder.version, "read_only": read_only,
                "results": [{**hit(h), "margin": h["margin"], "cluster": h["cluster"]} for h in hits]}
