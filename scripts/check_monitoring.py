#!/usr/bin/env python3
"""Offline checks of the monitoring files: the Grafana dashboard's structure and the PromQL names it and the
alert rules use. Run by scripts/validate-deploy; tests/deploy uses the same functions.

    python scripts/check_monitoring.py deploy/monitoring/grafana/dashboards/*.json --promql-rules /tmp/q.yml
    promtool check rules /tmp/q.yml      # every dashboard query, parsed by Prometheus's own parser

There is no offline Grafana to load a dashboard into, so `dashboard_problems` checks what Grafana needs to draw
it as intended: unique panel ids, panels inside the 24-column grid and not overlapping, a query with a unique
refId on every panel, data sources and `$variables` that the dashboard defines. `metric_names` reads the metric
names out of a PromQL expression, so a test can hold them against a real /metrics page:

    >>> sorted(metric_names('sum by (variant) (rate(router_requests_total{status="200"}[5m])) / scalar(up)'))
    ['router_requests_total', 'up']
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

#: Grafana's built-in variables, and what they become when a query is handed to promtool.
BUILTIN_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "__interval_ms": "60000",
}

#: Panel types of Grafana's core (no plugin needed).
PANEL_TYPES = frozenset(
    {"row", "timeseries", "stat", "gauge", "bargauge", "table", "state-timeline", "status-history", "text", "heatmap"}
)

#: Oldest dashboard schema the checks are written for (Grafana 10.x writes 38, 11.x writes 39).
MIN_SCHEMA_VERSION = 36

GRID_COLUMNS = 24

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABELS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
    | {"inf", "nan", "atan2", "start", "end"}
)
_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: every identifier that is not a function, keyword or label.

    Strings, label matchers, ranges and grouping clauses are removed first, so `model` in `by (model)` or
    `{variant="model_a"}` is not taken for a metric.
    """
    text = _STRING.sub('""', expr)
    text = _LABELS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    while True:
        stripped = _GROUPING.sub(" ", text)
        if stripped == text:
            break
        text = stripped
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call is None and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def label_names(expr: str) -> set[str]:
    """The label names a PromQL expression matches on or groups by.

    >>> sorted(label_names('sum by (variant, le) (rate(x_bucket{status!~"2..", job="router"}[5m]))'))
    ['job', 'le', 'status', 'variant']
    """
    text = _STRING.sub('""', expr)
    names = set()
    for block in _LABELS.findall(text):
        names |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", block))
    for clause in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", text):
        names |= {part.strip() for part in clause.split(",") if part.strip()}
    return names


def load_dashboard(path: Path) -> dict[str, Any]:
    """The dashboard JSON as a mapping. Raises ValueError naming the file if it is not a JSON object."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: a dashboard is a JSON object, got {type(loaded).__name__}")
    return loaded


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard.get("panels", []):
        if isinstance(panel, dict):
            yield panel
            yield from (p for p in panel.get("panels", []) if isinstance(p, dict))


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every query of every panel."""
    found = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if isinstance(target, dict) and isinstance(target.get("expr"), str):
                found.append((str(panel.get("title", "")), target["expr"]))
    return found


def rule_expressions(rules: dict[str, Any]) -> list[tuple[str, str]]:
    """(alert or record name, expression) for every rule of a Prometheus rule file."""
    found = []
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            found.append((str(rule.get("alert") or rule.get("record")), str(rule["expr"])))
    return found


def _variables(dashboard: dict[str, Any]) -> dict[str, str]:
    """Variable name -> type, for the dashboard's templating list."""
    listed = dashboard.get("templating", {}).get("list", [])
    return {str(v.get("name")): str(v.get("type")) for v in listed if isinstance(v, dict)}


def _datasource_problem(where: str, datasource: object, variables: dict[str, str]) -> str | None:
    if not isinstance(datasource, dict) or datasource.get("type") != "prometheus":
        return f"{where}: datasource must be {{'type': 'prometheus', 'uid': ...}}, got {datasource!r}"
    uid = str(datasource.get("uid", ""))
    reference = _VARIABLE.fullmatch(uid)
    if reference:
        name = reference.group(1) or reference.group(2)
        if variables.get(name) != "datasource":
            return f"{where}: datasource uid {uid!r} names no datasource variable of the dashboard"
    elif not uid:
        return f"{where}: datasource has no uid"
    return None


def dashboard_problems(dashboard: dict[str, Any]) -> list[str]:
    """Everything that would make Grafana refuse the dashboard or draw it other than intended; [] when none."""
    problems: list[str] = []
    for key, kind in (("title", str), ("uid", str), ("schemaVersion", int), ("panels", list), ("time", dict)):
        if not isinstance(dashboard.get(key), kind):
            problems.append(f"dashboard: {key!r} must be a {kind.__name__}")
    if problems:
        return problems
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"]):
        problems.append(f"dashboard: uid {dashboard['uid']!r} must be 1-40 letters, digits, '-' or '_'")
    if dashboard["schemaVersion"] < MIN_SCHEMA_VERSION:
        problems.append(f"dashboard: schemaVersion {dashboard['schemaVersion']} is older than {MIN_SCHEMA_VERSION}")
    variables = _variables(dashboard)
    ids: set[int] = set()
    boxes: list[tuple[str, int, int, int, int]] = []
    for panel in panels(dashboard):
        title = panel.get("title")
        where = f"panel {panel.get('id')!r} ({title!r})"
        if not isinstance(title, str) or not title.strip():
            problems.append(f"{where}: no title")
        panel_id = panel.get("id")
        if not isinstance(panel_id, int) or isinstance(panel_id, bool) or panel_id < 1:
            problems.append(f"{where}: id must be a positive integer")
        elif panel_id in ids:
            problems.append(f"{where}: duplicate panel id")
        else:
            ids.add(panel_id)
        if panel.get("type") not in PANEL_TYPES:
            problems.append(f"{where}: unknown panel type {panel.get('type')!r}")
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")):
            problems.append(f"{where}: gridPos needs integer h, w, x, y")
        else:
            h, w, x, y = grid["h"], grid["w"], grid["x"], grid["y"]
            if h < 1 or w < 1 or x < 0 or y < 0 or x + w > GRID_COLUMNS:
                problems.append(f"{where}: gridPos {grid} is outside the {GRID_COLUMNS}-column grid")
            for other, ox, oy, ow, oh in boxes:
                if x < ox + ow and ox < x + w and y < oy + oh and oy < y + h:
                    problems.append(f"{where}: overlaps {other}")
            boxes.append((where, x, y, w, h))
        if panel.get("type") == "row":
            if panel.get("targets"):
                problems.append(f"{where}: a row has no queries")
            continue
        datasource_problem = _datasource_problem(where, panel.get("datasource"), variables)
        if datasource_problem:
            problems.append(datasource_problem)
        targets = panel.get("targets")
        if not isinstance(targets, list) or not targets:
            problems.append(f"{where}: no queries")
            continue
        refs: set[str] = set()
        for target in targets:
            ref = target.get("refId") if isinstance(target, dict) else None
            if not isinstance(ref, str) or not ref:
                problems.append(f"{where}: a query without refId")
                continue
            if ref in refs:
                problems.append(f"{where}: duplicate refId {ref!r}")
            refs.add(ref)
            expr = target.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                problems.append(f"{where} query {ref}: no expr")
                continue
            if "datasource" in target:
                datasource_problem = _datasource_problem(f"{where} query {ref}", target["datasource"], variables)
                if datasource_problem:
                    problems.append(datasource_problem)
            for match in _VARIABLE.finditer(expr):
                name = match.group(1) or match.group(2)
                if name not in variables and name not in BUILTIN_VARIABLES:
                    problems.append(f"{where} query {ref}: undefined variable ${name}")
    return problems


def promql_rule_file(queries: list[tuple[str, str]]) -> str:
    """A Prometheus rule file with one recording rule per query, Grafana's variables replaced by fixed values,
    so that `promtool check rules` parses every query with Prometheus's own parser."""

    def concrete(expr: str) -> str:
        return _VARIABLE.sub(lambda m: BUILTIN_VARIABLES.get(m.group(1) or m.group(2), m.group(0)), expr)

    rules = [{"record": f"dashboard:query_{n}", "expr": concrete(expr)} for n, (_, expr) in enumerate(queries)]
    return yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check Grafana dashboards offline.")
    parser.add_argument("dashboards", nargs="+", type=Path)
    parser.add_argument("--promql-rules", type=Path, help="write every query as a rule file for promtool here")
    args = parser.parse_args(argv)
    failed = False
    queries: list[tuple[str, str]] = []
    for path in args.dashboards:
        try:
            dashboard = load_dashboard(path)
        except (OSError, ValueError) as exc:
            print(f"FAILED {exc}", file=sys.stderr)
            failed = True
            continue
        problems = dashboard_problems(dashboard)
        for problem in problems:
            print(f"FAILED {path}: {problem}", file=sys.stderr)
        failed = failed or bool(problems)
        found = expressions(dashboard)
        queries.extend(found)
        if not problems:
            print(f"{path}: {sum(1 for _ in panels(dashboard))} panels, {len(found)} queries: OK")
    if args.promql_rules is not None:
        args.promql_rules.write_text(promql_rule_file(queries), encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
