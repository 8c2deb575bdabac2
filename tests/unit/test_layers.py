"""The layers: the shared core (pm25/) imports nothing above it, and no function outside the tests
runs longer than 80 lines."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ABOVE_THE_CORE = {"producer", "stream_processor", "training", "dashboard", "benchmarks", "pm25_ops", "model_store"}
PACKAGES = ("pm25", "pm25_ops", "producer", "stream_processor", "training", "dashboard", "benchmarks", "model_store")


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_the_shared_core_imports_nothing_above_it():
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & ABOVE_THE_CORE)
        for path in sorted((ROOT / "pm25").rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_function_is_longer_than_80_lines():
    long = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "bundles" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = (node.end_lineno or node.lineno) - node.lineno + 1
                    if length > 80:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert long == []
