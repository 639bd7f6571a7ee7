"""The Prometheus scrape config and alert rules in conf/prometheus are well formed and only
use metrics the code exports (promtool is not installable from PyPI, so this is our check)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from serving.metrics import ScorerMetrics
from stack.settings import REPO_ROOT

CONF = REPO_ROOT / "conf" / "prometheus"
SOURCES = ["serving", "monitoring", "stack", "training", "pipelines"]


def _exported() -> str:
    return "\n".join(p.read_text() for d in SOURCES for p in Path(REPO_ROOT / d).rglob("*.py"))


def test_alert_rules_are_complete_and_use_exported_metrics() -> None:
    doc = yaml.safe_load((CONF / "alerts.yml").read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    # the four: lag too high, no predictions, drift detected, stage overdue
    assert {"VigilScorerLagHigh", "VigilNoPredictions", "VigilDriftDetected",
            "VigilStageOverdue"} <= names  # fmt: skip
    source = _exported()
    for rule in rules:
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        for metric in re.findall(r"\bvigil_[a-z_]+", rule["expr"]):
            base = re.sub(r"_(bucket|count|sum)$", "", metric)
            assert f'"{base}' in source or f'"{base}"' in source, (rule["alert"], metric)


def test_scrape_config_names_the_rule_file_and_each_part() -> None:
    doc = yaml.safe_load((CONF / "prometheus.yml").read_text())
    assert doc["rule_files"] == ["alerts.yml"]
    jobs = {j["job_name"] for j in doc["scrape_configs"]}
    assert jobs == {"vigil-service", "vigil-scorer", "vigil-batch"}


def test_scorer_metric_names_follow_conventions() -> None:
    for fam in ScorerMetrics().registry.collect():
        assert fam.name.startswith("vigil_scorer_")
        if fam.type == "counter":
            assert not fam.name.endswith("_total")  # the client adds _total to samples
        if fam.type == "histogram":
            assert fam.name.endswith("_seconds")
