"""docs/benchmarks.md is generated from bench/results/*.json and agrees with them."""

from __future__ import annotations

import json

from bench import report


def test_the_benchmark_page_is_what_the_results_say() -> None:
    assert report.PAGE.read_text() == report.render(), "run `python -m bench.report`"


def test_every_result_file_has_a_section() -> None:
    names = {name for name, *_ in report.SECTIONS}
    files = {p.stem for p in report.RESULTS.glob("*.json")}
    assert files <= names, files - names
    for path in report.RESULTS.glob("*.json"):
        d = json.loads(path.read_text())
        build = next(b for name, _t, _c, b in report.SECTIONS if name == path.stem)
        rows = build(d)
        assert rows, path.stem
        assert all(len(r) == 4 for r in rows)
