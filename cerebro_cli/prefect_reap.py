"""Prefect runs of a killed command are marked Crashed by the next one (as MLflow's are FAILED,
:func:`cerebro_core.tracking.reap_stale_runs`).

A command that runs a flow in its own process tags every flow and task run it creates with
``cerebro.host:<host>`` and ``cerebro.pid:<pid>`` (:func:`mark_runs`). A SIGKILL or a power loss
leaves them RUNNING for ever: nothing in the process is left to report its end. The next command
(:func:`reap`) finds the runs of this host still RUNNING or PENDING whose process is gone, and
sets them, and their unfinished task runs, Crashed (forced), saying why.
"""

from __future__ import annotations

import os
import socket
from typing import Callable

HOST, PID = "cerebro.host:", "cerebro.pid:"
_marked = []


def mark_runs() -> None:
    """For the rest of this process, flow and task runs carry its host and pid as tags."""
    from prefect import tags

    if not _marked:
        cm = tags(HOST + socket.gethostname(), PID + str(os.getpid()))
        cm.__enter__()  # left open on purpose: it lasts as long as the command
        _marked.append(cm)


def reap(log: Callable[[str], None]) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterId, FlowRunFilterState,
                                                FlowRunFilterStateType, FlowRunFilterTags, TaskRunFilter,
                                                TaskRunFilterState, TaskRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    from cerebro_core.tracking import _alive

    host = socket.gethostname()
    unfinished = [StateType.RUNNING, StateType.PENDING]
    out = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=unfinished)),
            tags=FlowRunFilterTags(all_=[HOST + host])))
        for fr in runs:
            pid = next((t[len(PID):] for t in fr.tags if t.startswith(PID)), "")
            started = fr.start_time or fr.created
            if not pid.isdigit() or int(pid) == os.getpid() or (
                    started and _alive(int(pid), int(started.timestamp() * 1000))):
                continue
            why = f"its process {pid} on {host} ended without reporting it (killed?)"
            msg = f"marked Crashed by process {os.getpid()}: {why}"
            tasks = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr.id])),
                task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=unfinished))))
            for tr in tasks:
                client.set_task_run_state(tr.id, Crashed(message=msg), force=True)
            client.set_flow_run_state(fr.id, Crashed(message=msg), force=True)
            out.append(f"marked the Prefect flow run {fr.name} ({fr.id}) and {len(tasks)} task run(s) Crashed: {why}")
    for m in out:
        log(m)
    return out
