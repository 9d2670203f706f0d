"""The Grafana dashboard (deploy/grafana/webhookd.json) cannot rot: every metric, label and
label value its queries name is checked against the `/metrics` output of a real daemon that
has delivered an event, and the JSON must keep the shape Grafana imports."""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, Api, make_settings, running
from tests.receivers import Recorder, Reply

DASHBOARD = REPO / "deploy" / "grafana" / "webhookd.json"

METRIC = re.compile(r"\bwebhookd_[a-zA-Z0-9_:]+")
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
SELECTOR = re.compile(r"\b(webhookd_[a-zA-Z0-9_:]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
# Labels Prometheus adds at scrape time, and so never in the exposition itself.
TARGET_LABELS = frozenset({"job", "instance"})
# Gauges read from the shared queue: every daemon on one database reports the same figure.
SHARED_GAUGES = frozenset(
    {
        "webhookd_queue_depth",
        "webhookd_oldest_due_age_seconds",
        "webhookd_scanner_lag_events",
        "webhookd_webhooks_disabled",
        "webhookd_fifo_blocked_seconds",
    }
)
COUNTER_SUFFIXES = ("_total", "_bucket", "_sum", "_count")
GRID_WIDTH = 24


@dataclass
class Exported:
    """What one scrape of /metrics offers a query: sample names, their labels and values."""

    families: dict[str, set[str]] = field(default_factory=dict)  # family -> sample names
    labels: dict[str, dict[str, set[str]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(set))
    )  # sample name -> label -> values

    @classmethod
    def parse(cls, text: str) -> Exported:
        exported = cls()
        for family in text_string_to_metric_families(text):
            names = exported.families.setdefault(family.name, set())
            for sample in family.samples:
                names.add(sample.name)
                by_label = exported.labels[sample.name]
                for label, value in sample.labels.items():
                    by_label[label].add(value)
        return exported

    @property
    def samples(self) -> set[str]:
        return set(self.labels)


def load_dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    found: list[tuple[str, str]] = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            where = f"panel {panel.get('id')} {panel.get('title')!r} target {target.get('refId')}"
            found.append((where, str(target.get("expr", ""))))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable.get("query")
            text = query.get("query", "") if isinstance(query, dict) else str(query or "")
            found.append((f"variable {variable.get('name')!r}", text))
    return found


def balanced(expr: str) -> bool:
    stack: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for char in QUOTED.sub('""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


def query_problems(where: str, expr: str, exported: Exported) -> list[str]:
    problems: list[str] = []
    names = set(METRIC.findall(expr))
    if not names:
        return [f"{where}: no webhookd metric in {expr!r}"]
    if not balanced(expr):
        problems.append(f"{where}: unbalanced brackets or quotes in {expr!r}")
    for name in sorted(names - exported.samples):
        problems.append(f"{where}: {name} is not in /metrics")
    for name, inside in SELECTOR.findall(expr):
        for label, op, value in MATCHER.findall(inside):
            if label in TARGET_LABELS or name not in exported.samples:
                continue
            values = exported.labels[name].get(label)
            if values is None:
                problems.append(f"{where}: {name} has no label {label!r}")
            elif op in ("=", "!=") and "$" not in value and value not in values:
                problems.append(f"{where}: {name}{{{label}={value!r}}} is not in /metrics")
    offered = set(TARGET_LABELS)
    for name in names & exported.samples:
        offered |= set(exported.labels[name])
    for group in GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in group.split(","))):
            if label not in offered:
                problems.append(f"{where}: no metric of {expr!r} has the label {label!r}")
    for name in names:
        # A counter is read through rate() or increase(); a gauge of the shared queue through
        # max(): summing it would count the same rows once per daemon.
        escaped = re.escape(name)
        if name.endswith(COUNTER_SUFFIXES) and not re.search(
            rf"\b(?:rate|increase)\s*\(\s*{escaped}\b", expr
        ):
            problems.append(f"{where}: the counter {name} is used without rate() or increase()")
        if name in SHARED_GAUGES and where.startswith("panel"):
            uses = len(re.findall(rf"\b{escaped}\b", expr))
            maxed = len(re.findall(rf"\bmax\s*(?:by\s*\([^)]*\)\s*)?\(\s*{escaped}\b", expr))
            if uses != maxed:
                problems.append(f"{where}: {name} is the same on every daemon: take max()")
    return problems


def problems_against(dashboard: dict[str, Any], exported: Exported) -> list[str]:
    problems: list[str] = []
    used: set[str] = set()
    for where, expr in queries(dashboard):
        used |= set(METRIC.findall(expr))
        problems.extend(query_problems(where, expr, exported))
    for family, samples in sorted(exported.families.items()):
        if family.removesuffix("_created") in exported.families.keys() - {family}:
            continue  # the creation time of a counter or histogram: nothing to chart
        if family.startswith("webhookd_") and not samples & used:
            problems.append(f"{family} is exported but on no panel of {DASHBOARD.name}")
    return problems


def shape_problems(dashboard: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    if not isinstance(dashboard.get("schemaVersion"), int) or dashboard["schemaVersion"] < 36:
        problems.append("schemaVersion: an integer, 36 or later")
    for key in ("uid", "title"):
        if not dashboard.get(key):
            problems.append(f"{key}: missing")
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    sources = [
        name
        for name, v in variables.items()
        if v.get("type") == "datasource" and v.get("query") == "prometheus"
    ]
    if not sources:
        problems.append("templating: no Prometheus data source variable")
    source_refs = {f"${{{name}}}" for name in sources} | {f"${name}" for name in sources}
    for name in ("job", "instance"):
        if variables.get(name, {}).get("type") != "query":
            problems.append(f"templating: no {name!r} query variable")
    ids: list[Any] = []
    cells: dict[tuple[int, int], Any] = {}
    panels = all_panels(dashboard)
    if not [p for p in panels if p.get("type") != "row"]:
        problems.append("no panels")
    for panel in panels:
        pid = panel.get("id")
        ids.append(pid)
        name = f"panel {pid} {panel.get('title')!r}"
        if not isinstance(pid, int):
            problems.append(f"{name}: id is not an integer")
        if not panel.get("title") or not panel.get("type"):
            problems.append(f"{name}: title and type are required")
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in "hwxy"):
            problems.append(f"{name}: gridPos needs integer h, w, x, y")
            continue
        if grid["x"] < 0 or grid["x"] + grid["w"] > GRID_WIDTH:
            problems.append(f"{name}: wider than the grid")
        for row in range(grid["y"], grid["y"] + grid["h"]):
            for col in range(grid["x"], grid["x"] + grid["w"]):
                if (row, col) in cells:
                    problems.append(f"{name}: overlaps panel {cells[(row, col)]}")
                    break
                cells[(row, col)] = pid
        if panel.get("type") == "row":
            continue
        if not panel.get("description"):
            problems.append(f"{name}: no description (say how several daemons are combined)")
        if panel.get("datasource", {}).get("uid") not in source_refs:
            problems.append(f"{name}: its data source is not the data source variable")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{name}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or not all(refs):
            problems.append(f"{name}: refIds must be present and unique: {refs}")
        for target in targets:
            if not str(target.get("expr", "")).strip():
                problems.append(f"{name}: target {target.get('refId')} has no expr")
    duplicates = sorted({i for i in ids if ids.count(i) > 1}, key=str)
    if duplicates:
        problems.append(f"panel ids used twice: {duplicates}")
    return problems


def test_the_dashboard_has_the_shape_grafana_imports() -> None:
    assert shape_problems(load_dashboard()) == []


def test_the_shape_check_bites() -> None:
    dashboard = load_dashboard()
    broken = copy.deepcopy(dashboard)
    graphs = [p for p in broken["panels"] if p["type"] != "row"]
    graphs[1]["id"] = graphs[0]["id"]
    graphs[2]["targets"] = []
    broken["templating"]["list"] = [
        v for v in broken["templating"]["list"] if v["type"] != "datasource"
    ]
    found = "\n".join(shape_problems(broken))
    assert "used twice" in found
    assert "no targets" in found
    assert "no Prometheus data source variable" in found


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def exposition(tmp_path_factory: pytest.TempPathFactory) -> str:
    """/metrics of a real daemon after one event was delivered to a loopback receiver, so
    the labelled counter and the histogram have samples, and while a fifo webhook is held
    up by a head that fails, so the fifo gauge has one (one daemon for the module)."""
    async with (
        Recorder(status=204) as rx,
        running(make_settings(tmp_path_factory.mktemp("dashboard"))) as d,
        Api(d.url) as api,
    ):
        rx.reply_on("/fifo", Reply(status=500))
        delivered = await api.create_webhook(rx.url)
        await api.create_webhook(rx.url_for("/fifo"), ordering="fifo")
        await api.emit({"type": "dashboard.check", "data": {}})
        await rx.wait_for_requests(2)
        await api.wait_status({"delivered": 1}, webhook_id=delivered["webhook_id"])
        for _ in range(200):
            if (await api.ok("GET", "/v1/status"))["fifo_blocked"]:
                break
            await asyncio.sleep(0.05)
        status, text = await api.request("GET", "/metrics")
    assert status == 200, text
    assert 'webhookd_attempts_total{outcome="delivered"' in text
    return str(text)


def test_every_query_names_what_metrics_exports(exposition: str) -> None:
    assert problems_against(load_dashboard(), Exported.parse(exposition)) == []


@pytest.mark.parametrize(
    ("find", "replace", "expected"),
    [
        ("webhookd_attempts_total", "webhookd_attempts_sent_total", "is not in /metrics"),
        ("webhookd_attempt_duration_seconds_bucket", "webhookd_latency_bucket", "not in"),
        ("by (outcome)", "by (result)", "has the label 'result'"),
        ('status="pending"', 'state="pending"', "has no label 'state'"),
        ('outcome="delivered"', 'outcome="ok"', "outcome='ok'"),
        ("max(webhookd_queue_depth", "sum(webhookd_queue_depth", "take max()"),
    ],
)
def test_the_check_bites(exposition: str, find: str, replace: str, expected: str) -> None:
    broken = load_dashboard()
    target = next(
        (t for p in all_panels(broken) for t in p.get("targets", []) if find in t["expr"]), None
    )
    assert target is not None, f"{find!r} is no longer on the dashboard: pick another example"
    target["expr"] = target["expr"].replace(find, replace, 1)
    found = problems_against(broken, Exported.parse(exposition))
    assert any(expected in p for p in found), found


def test_a_query_without_a_webhookd_metric_fails(exposition: str) -> None:
    dashboard = load_dashboard()
    panel = next(p for p in dashboard["panels"] if p.get("targets"))
    panel["targets"][0]["expr"] = 'sum(up{job="$job"})'
    found = problems_against(dashboard, Exported.parse(exposition))
    assert any("no webhookd metric" in p for p in found), found
