"""Structure figures for a checkout: the longest functions and the imports placed inside functions.

    .venv/bin/python benchmarks/house_metrics.py [CHECKOUT] [--top 10] [--json OUT]

Function length counts the lines from `def` to the last line of the body (decorators and the
docstring included, as a reader sees it). Function-local imports are `import` / `from ... import`
statements inside a function body, counted outside `edgeclip/cli/` (the CLI imports lazily on
purpose, so `--help` stays fast); each is listed, so a reader can tell an optional SDK (lazy by
design) from an import that hides a cycle.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path


def functions(root: Path) -> list[tuple[int, str]]:
    out = []
    for path in sorted((root / "edgeclip").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = path.relative_to(root / "edgeclip").with_suffix("").as_posix()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                out.append((int(node.end_lineno or node.lineno) - start + 1, f"{rel}.{node.name}"))
    return sorted(out, reverse=True)


def local_imports(root: Path) -> list[str]:
    found = []
    for path in sorted((root / "edgeclip").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("edgeclip/cli/"):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    found += [f"{rel}:{node.lineno} {a.name}" for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    found.append(f"{rel}:{node.lineno} {node.module}")
    return sorted(set(found))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkout", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    root = Path(args.checkout)
    longest = functions(root)[: args.top]
    imports = local_imports(root)
    for n, name in longest:
        print(f"{n:5d}  {name}")
    print(f"function-local imports outside edgeclip/cli/: {len(imports)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"longest": longest, "local_imports": imports}, indent=1) + "\n")


if __name__ == "__main__":
    main()
