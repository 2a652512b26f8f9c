"""No import circles in the project (scripts/import_graph.py), and the detector finds a planted one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
import_graph = importlib.util.module_from_spec(spec)
spec.loader.exec_module(import_graph)


def test_the_project_has_no_import_circle():
    edges = import_graph.graph()
    assert "benchmark.evaluate" in edges and "manifests.publish.build" in edges  # the walk saw the tree
    assert "manifests.publish.card" in edges["manifests.publish.build"]
    assert import_graph.cycles(edges) == []


def test_a_lazy_or_type_checking_import_back_is_a_circle(tmp_path):
    for package in import_graph.PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "benchmark" / "a.py").write_text("from benchmark.b import x\n")
    (tmp_path / "benchmark" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from benchmark import a\n"
    )
    (tmp_path / "manifests" / "c.py").write_text("def f():\n    from .d import y\n")
    (tmp_path / "manifests" / "d.py").write_text("def g():\n    import manifests.c\n")
    assert import_graph.cycles(import_graph.graph(tmp_path)) == [
        ["benchmark.a", "benchmark.b"],
        ["manifests.c", "manifests.d"],
    ]
