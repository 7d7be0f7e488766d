"""fastconv's import graph, read from the source with `ast` (module-level and function-level
imports alike: a circle through a function-level import is still a circle), and the
layering it must keep."""
import ast
import pathlib

import fastconv

PACKAGE_DIR = pathlib.Path(fastconv.__file__).parent


def module_name(path, root=PACKAGE_DIR):
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root=PACKAGE_DIR):
    """{module: set of the package's modules it imports}, over every .py file under root
    (and compiled extensions, which import nothing of it).
    `from a.b import c` is an edge to a.b.c where that is a module, else to a.b; an import
    of a submodule is not counted as an import of its parent packages (whose __init__
    importing their submodules is the usual Python layout, not a circle)."""
    package = root.name
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    extensions = {module_name(p.with_name(p.name.split(".")[0]), root) for p in root.rglob("*.so")}
    graph = {name: set() for name in extensions}  # compiled: imports nothing of the package
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node, name, is_package)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in graph.keys() | modules.keys()
                           else base for alias in node.names]
            else:
                continue
            edges.update(t for t in targets if (t in modules or t in extensions)
                         and (t == package or t.startswith(package + ".")))
        edges.discard(name)
        graph[name] = edges
    return graph


def _resolve(node, module, is_package):
    """The absolute module an ImportFrom names (relative imports resolved)."""
    if not node.level:
        return node.module
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def find_cycles(graph, within=""):
    """Every import circle among the modules whose name starts with `within` (each as the
    list of modules along it, first repeated last); [] if there is none."""
    nodes = {m for m in graph if m.startswith(within)}
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m] & nodes):
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack)
        stack.pop()
        state[m] = "done"

    for m in sorted(nodes):
        if m not in state:
            visit(m, [])
    return cycles


def test_find_cycles_sees_a_circle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.a import f\n")
    (pkg / "sub" / "a.py").write_text("from pkg.sub import b\n\ndef f():\n    pass\n")
    (pkg / "sub" / "b.py").write_text("def g():\n    from .a import f\n    return f\n")
    graph = import_graph(pkg)
    assert graph["pkg.sub"] == {"pkg.sub.a"} and graph["pkg.sub.a"] == {"pkg.sub.b"}
    assert find_cycles(graph, "pkg.sub") == [["pkg.sub.a", "pkg.sub.b", "pkg.sub.a"]]


def test_convert_package_has_no_import_circle():
    graph = import_graph()
    assert {m for m in graph if m.startswith("fastconv.convert.")} >= {
        "fastconv.convert.conv_norm", "fastconv.convert.inception", "fastconv.convert.tracing"}
    assert find_cycles(graph, "fastconv.convert") == []
    # and nothing inside it imports the package itself (whose __init__ imports them all)
    assert not [m for m in graph if m.startswith("fastconv.convert.") and "fastconv.convert" in graph[m]]
