#!/usr/bin/env python3
"""The dashboard and the alerts against the metrics contract (docs/metrics.md).

* the Grafana dashboard (helm/statehouse/dashboards/statehouse.json) parses as JSON and has
  panels with Prometheus queries;
* every `statehouse_…` metric a dashboard query or an alert expression uses is a row of
  docs/metrics.md's table (a histogram's `_bucket`/`_sum`/`_count` series count as its row);
* every alert of the rules file has a `runbook_url` whose anchor is a heading of docs/runbooks.md,
  a `summary` and a `severity`.

Usage: metrics_refs.py check DASHBOARD.json RULES.yaml  (RULES: Prometheus rule groups)
       metrics_refs.py extract RENDERED.yaml OUTDIR  (writes OUTDIR/rules.yaml, the rendered
       PrometheusRule's spec, and OUTDIR/statehouse.json, the rendered dashboard ConfigMap's
       JSON, for promtool and `check`)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
METRIC = re.compile(r"\bstatehouse_[a-z0-9_]+")
# Target labels of the scrape, not metrics: the chart's ServiceMonitor turns the pod label
# statehouse.io/service into this one (docs/metrics.md).
TARGET_LABELS = {"statehouse_io_service"}
ROW = re.compile(r"^\|\s*`(statehouse_[a-z0-9_]+)`\s*\|\s*([a-z]+)\s*\|")


def contract() -> dict[str, str]:
    rows = {}
    for line in (ROOT / "docs/metrics.md").read_text().splitlines():
        m = ROW.match(line)
        if m:
            rows[m.group(1)] = m.group(2)
    if not rows:
        raise SystemExit("docs/metrics.md: no metrics table found")
    return rows


def known(name: str, rows: dict[str, str]) -> bool:
    if name in rows:
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and rows.get(name[: -len(suffix)]) == "histogram":
            return True
    return False


def anchors() -> set[str]:
    out = set()
    for line in (ROOT / "docs/runbooks.md").read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return out


def exprs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from exprs(item)


def extract(rendered: str, out: str) -> int:
    docs = [d for d in yaml.safe_load_all(Path(rendered).read_text()) if d]
    rules = [d for d in docs if d.get("kind") == "PrometheusRule"]
    boards = [d for d in docs if d.get("kind") == "ConfigMap" and "statehouse.json" in (d.get("data") or {})]
    if len(rules) != 1 or len(boards) != 1:
        print(f"ERROR {rendered}: expected one PrometheusRule and one dashboard ConfigMap, found {len(rules)} and {len(boards)}")
        return 1
    if boards[0]["metadata"].get("labels", {}).get("grafana_dashboard") != "1":
        print(f"ERROR {rendered}: the dashboard ConfigMap lacks the label grafana_dashboard: \"1\"")
        return 1
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, "rules.yaml").write_text(yaml.safe_dump(rules[0]["spec"], sort_keys=False))
    Path(out, "statehouse.json").write_text(boards[0]["data"]["statehouse.json"])
    print(f"extracted {out}/rules.yaml and {out}/statehouse.json")
    return 0


def main() -> int:
    if sys.argv[1] == "extract":
        return extract(sys.argv[2], sys.argv[3])
    dashboard_path, rules_path = sys.argv[2], sys.argv[3]
    rows = contract()
    errors = []
    try:
        dashboard = json.loads(Path(dashboard_path).read_text())
    except json.JSONDecodeError as e:
        print(f"ERROR {dashboard_path}: not JSON: {e}")
        return 1
    queries = list(exprs(dashboard))
    if not dashboard.get("panels") or not queries:
        errors.append(f"{dashboard_path}: no panels with queries")
    rules = yaml.safe_load(Path(rules_path).read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    if not alerts:
        errors.append(f"{rules_path}: no alerts")
    used = {}
    for q in queries:
        for name in METRIC.findall(q):
            used.setdefault(name, "the dashboard")
    for rule in alerts:
        for name in METRIC.findall(rule["expr"]):
            used.setdefault(name, f"alert {rule['alert']}")
    for name, where in sorted(used.items()):
        if name not in TARGET_LABELS and not known(name, rows):
            errors.append(f"{where} uses {name}, which is not in docs/metrics.md's table: add its row (or fix the name)")
    heads = anchors()
    for rule in alerts:
        annotations = rule.get("annotations", {})
        url = annotations.get("runbook_url", "")
        anchor = url.rsplit("#", 1)[-1] if "#" in url else ""
        if not anchor or anchor not in heads:
            errors.append(f"alert {rule['alert']}: runbook_url {url!r} names no heading of docs/runbooks.md")
        if not annotations.get("summary") or not rule.get("labels", {}).get("severity"):
            errors.append(f"alert {rule['alert']}: needs a summary annotation and a severity label")
    for e in errors:
        print(f"ERROR {e}")
    print(f"metrics-refs: {len(queries)} dashboard queries, {len(alerts)} alerts, {len(used)} metrics used, "
          f"{len(rows)} in docs/metrics.md, {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
