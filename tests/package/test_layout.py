"""The package's layout (docs/ARCHITECTURE.md §2): python_ref imports nothing of ours, imports only point downwards
through the layers, the module graph has no cycle, no module grows past 400 lines, no line of code past 120
characters, and configuration, tasks and file formats import without the compiled extension (which fails with one
clear error on first op use)."""
import ast
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "sdtp_kernels"

# Lower layers never import higher ones: ops -> config/predictor -> hf -> train -> eval -> demo/reference -> cli.
LAYERS = {
    "version": 0, "ops": 0, "op_fakes": 0, "tasks": 0, "arguments": 0,
    "": 1, "files": 1, "config": 1, "predictor": 1, "predictor_file": 1, "measure": 1, "models": 1,
    "devices": 1,
    "hf": 2,
    "train": 3,
    "eval": 4,
    "demo": 5, "reference": 5, "lm_eval": 5, "vllm": 5,
    "cli": 6,
}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, top_level_only: bool = False) -> set[str]:
    """The sdtp_kernels / python_ref modules a file imports (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from . import x` imports submodule x; `from .m import x` imports m (and x, if x is a submodule).
            found |= ({module} if node.module else set()) | {f"{module}.{alias.name}" for alias in node.names}
    return {m for m in found if m.split(".")[0] in ("sdtp_kernels", "python_ref")}


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else ""]


def _package_files():
    return sorted(PACKAGE.rglob("*.py"))


def test_python_ref_imports_nothing_of_ours():
    for path in sorted((ROOT / "python_ref").glob("*.py")):
        assert not {m for m in _imports(path) if m.startswith("sdtp_kernels")}, path
    code = "import sys, python_ref; assert not [m for m in sys.modules if m.startswith('sdtp_kernels')]"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_the_package_does_not_import_python_ref():
    for path in _package_files():
        assert not {m for m in _imports(path) if m.startswith("python_ref")}, path


def test_imports_point_downwards():
    upward = []
    for path in _package_files():
        own = _layer(_module_name(path))
        for module in _imports(path):
            if module.startswith("sdtp_kernels") and module.split(".")[1:2] != ["_C"] and _layer(module) > own:
                upward.append(f"{_module_name(path)} (layer {own}) imports {module} (layer {_layer(module)})")
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    modules = {_module_name(p): p for p in _package_files()}
    graph = {name: {m for m in _imports(path, top_level_only=True) if m in modules and m != name}
             for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in graph[node]:
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(trail + [node, nxt])
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])


def test_no_module_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in _package_files() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


CODE = ("sdtp_kernels/**/*.py", "python_ref/*.py", "bench/*.py", "tests/**/*.py", "csrc/**/*.c*", "csrc/**/*.h",
        "scripts/*", ".ci/run", "CMakeLists.txt", "pyproject.toml")


def test_no_line_of_code_over_120_characters():
    files = {p for pattern in CODE for p in ROOT.glob(pattern) if p.is_file() and "__pycache__" not in p.parts}
    long = [f"{p.relative_to(ROOT)}:{i}" for p in sorted(files)
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if len(line) > 120]
    assert not long, long


# Headers that pull in every ATen operator (or the whole C++ frontend): each costs a translation unit 10-20 s of
# parsing, more under nvcc, which parses once per target architecture. Include ATen/core/Tensor.h and ATen/ops/*.h.
UMBRELLA_HEADERS = ("ATen/ATen.h", "ATen/Functions.h", "torch/extension.h", "torch/all.h", "torch/torch.h")


# What nvcc never parses: the CUDA sources include none of these, also not through our own headers.
HOST_ONLY_HEADERS = (*UMBRELLA_HEADERS, "torch/library.h")


def test_native_sources_include_no_umbrella_header():
    found = []
    for path in sorted(p for p in ROOT.glob("csrc/**/*") if p.is_file()):
        text = path.read_text()
        # Every file but the .cpp sources may end up in an nvcc translation unit.
        headers = UMBRELLA_HEADERS if path.suffix == ".cpp" else HOST_ONLY_HEADERS
        found += [f"{path.relative_to(ROOT)}: {h}" for h in headers if f"#include <{h}>" in text]
    assert not found, found


def _run_with_a_copy_of_the_package(tmp_path, extension, body: str) -> None:
    """Runs `body` in a fresh interpreter that imports the package from a copy in tmp_path, whose compiled extension
    is `extension` (bytes; None: none). -S: no site initialisation, so the editable install's import hook cannot hand
    out the built extension. `op_error` is what the first op call raised."""
    shutil.copytree(PACKAGE, tmp_path / "sdtp_kernels", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    if extension is not None:
        (tmp_path / "sdtp_kernels" / f"_C{sysconfig.get_config_var('EXT_SUFFIX')}").write_bytes(extension)
    prelude = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(tmp_path)!r}, {sysconfig.get_paths()["purelib"]!r}, {sysconfig.get_paths()["platlib"]!r}]
        import sdtp_kernels
        assert sdtp_kernels.__file__.startswith({str(tmp_path)!r}), sdtp_kernels.__file__
        def op_error():
            import torch
            try:
                sdtp_kernels.select_tokens(torch.zeros(1, 4), 2)
            except RuntimeError as error:
                return str(error)
            raise AssertionError("an op ran without a loadable extension")
    """)
    subprocess.run([sys.executable, "-S", "-c", prelude + textwrap.dedent(body)], cwd=tmp_path, check=True)


def test_config_tasks_and_formats_import_without_the_build(tmp_path):
    _run_with_a_copy_of_the_package(tmp_path, None, """
        import sdtp_kernels.config, sdtp_kernels.tasks.retrieval, sdtp_kernels.predictor_file
        from sdtp_kernels.cli import build_parser
        assert "sdtp_kernels._C" not in sys.modules
        build_parser()
        sdtp_kernels.SDTPConfig(keep_ratio=0.5).stage_layers(12)
        error = op_error()
        assert "not built" in error and "scripts/setup.sh" in error, error
    """)


def test_a_build_that_does_not_load_fails_at_the_first_op_call(tmp_path):
    # As after a torch upgrade: the extension is there but cannot load. The CLI and the layers above the ops import,
    # and the first op call says so.
    _run_with_a_copy_of_the_package(tmp_path, b"not a library", """
        import sdtp_kernels.ops, sdtp_kernels.hf, sdtp_kernels.measure
        from sdtp_kernels.cli import build_parser
        build_parser()
        error = op_error()
        assert "do not load" in error and "scripts/setup.sh" in error, error
    """)
