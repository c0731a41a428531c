"""The Grafana dashboard as tests read it: its panels and its PromQL with Grafana's variables substituted."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "latentwatch.json"
# Grafana's variables -> what they mean for a query run by hand
GRAFANA_VARS = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m", "$instance": ".*"}


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_exprs(dash: dict | None = None) -> list[str]:
    """Every `expr` in the dashboard, Grafana variables substituted."""
    dash = dash or load()
    exprs = [t["expr"] for p in all_panels(dash) for t in p.get("targets", []) if t.get("expr")]
    out = []
    for e in exprs:
        for var, value in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
            e = e.replace(var, value)
        assert "$" not in e, f"unsubstituted variable in {e}"
        out.append(e)
    return out
