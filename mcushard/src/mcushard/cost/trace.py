"""A CostReport's timeline as Chrome / Perfetto trace JSON (open in ui.perfetto.dev or chrome://tracing).

One process ("system"), one thread per chip; every compute kernel, all-reduce and send is a
complete event ("ph": "X") with its start and duration in microseconds.
"""

from __future__ import annotations

import json

from mcushard.cost.simulate import CostReport


def trace_events(report: CostReport) -> dict:
    if not report.events:
        raise ValueError("the report has no events: simulate(..., trace=True)")
    events: list[dict] = [{"ph": "M", "pid": 0, "name": "process_name",
                           "args": {"name": f"{report.model} {report.strategy} x{report.n_chips} {report.mode}"}}]
    for c in range(report.n_chips):
        events.append({"ph": "M", "pid": 0, "tid": c, "name": "thread_name", "args": {"name": f"chip {c}"}})
    for chip, name, cat, start_s, dur_s in report.events:
        events.append({"ph": "X", "pid": 0, "tid": chip, "name": name, "cat": cat,
                       "ts": round(start_s * 1e6, 4), "dur": round(dur_s * 1e6, 4)})
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "otherData": {"latency_ms": report.latency_s * 1e3, "energy_mj": report.energy_j * 1e3}}


def trace_json(report: CostReport) -> str:
    return json.dumps(trace_events(report))
