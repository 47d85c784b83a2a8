"""The package's shape: imports run one way (no cycle; config.py at the bottom imports nothing of ours), each
artifact name is defined once, and the layout section of docs/development.md names every module."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "musclebob_helpers"


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, from the source (imports inside functions count too)."""
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    graph = {}
    for name in modules:
        found = set()
        for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("musclebob_helpers."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("musclebob_helpers.")}
        graph[name] = found & modules - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, done = [], set()

    def visit(node, path):
        for nxt in sorted(graph[node]):
            if nxt in path:
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    for start in sorted(graph):
        visit(start, [start])
    return found


def test_imports_run_one_way():
    graph = import_graph()
    assert graph["config"] == set()  # the bottom: everything builds on it
    assert graph["io"] == set()
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_each_artifact_name_is_defined_once():
    names = ("reward_history.json", "baseline_validation.json", "final_validation.json", "training_config.json")
    for name in names:
        defined = [p.name for p in PACKAGE.glob("*.py") if re.search(rf'= "{re.escape(name)}"', p.read_text())]
        assert defined == ["run_dir.py"], (name, defined)


def test_docs_layout_names_every_module():
    page = (ROOT / "docs" / "development.md").read_text()
    layout = page[page.index("## Layout") :]
    layout = layout.split("\n## ", 1)[0]  # up to the next section, or the page's end
    for module in sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"):
        assert re.search(rf"^\s*{module}\.py\s+\S", layout, re.M), (
            f"{module}.py has no line in docs/development.md's layout"
        )
