"""The package's imports point one way, and Ray and Lightning stay where they are the point.

    scripts -> serving -> training / inference -> data / models / evaluation
            -> config, spec, storage, output_guard, errors

Ray lives in ray_cluster (starting or joining it), training/ray_train (Ray Train),
training/tune (Ray Tune over Ray Train runs),
inference/remote (the Ray-task fan-out), inference/streaming (fleet inference on Ray Data and
an actor pool; infer.py imports it only when the streaming path is chosen) and data/ray_prepare
(preparation on Ray Data for fleets; data/prepare imports it only when ``data.prepare_with``
picks Ray). Online forecasts keep Ray Serve and FastAPI in serving/app, and pydantic's request
models in serving/api. Lightning lives in training alone: inference, serving and the plain model
(LIGHTNING_FREE) load none of it, which is checked through their imports and in a fresh interpreter.

Read from the source with ``ast`` (lazy imports inside functions count too), so a forbidden
import fails here before it tangles the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "lit_forecast"

BOTTOM = {"errors", "spec", "config", "storage", "progress", "output_guard"}
# Layer (a top-level module, or a subpackage) -> the layers it may import besides itself.
ALLOWED = {
    "errors": set(),
    "spec": {"errors"},
    "config": {"errors"},
    "config_docs": {"config"},  # docs/configuration.md from the config dataclasses
    "storage": {"errors"},
    "progress": set(),
    "startup": set(),  # the scripts' interrupt guard, before their heavy imports
    "output_guard": {"errors", "storage"},
    "layout": {"errors", "config", "storage"},
    "ray_cluster": {"errors"},
    "cli": {"errors", "config", "layout"},
    "data": BOTTOM | {"ray_cluster"},  # data/ray_prepare joins or starts Ray as training does
    "models": {"errors", "spec", "config"},  # never data/: the network knows windows only as tensors
    "evaluation": {"errors", "storage", "progress", "spec"},
    "console": {"data"},
    "inference": BOTTOM | {"layout", "ray_cluster", "data", "models", "evaluation"},
    "training": BOTTOM | {"layout", "ray_cluster", "data", "models", "evaluation", "console", "cli"},
    "serving": BOTTOM | {"layout", "ray_cluster", "data", "inference"},  # never models/: it forecasts through inference
}
# Third-party frameworks and the only modules that may import them.
FRAMEWORKS = {
    "ray": {
        "ray_cluster",
        "training/ray_train",
        "training/tune",
        "inference/remote",
        "inference/streaming",
        "data/ray_prepare",
        "serving/app",
    },
    "fastapi": {"serving/app"},
    "starlette": {"serving/app"},
    "pydantic": {"serving/api"},
    "lightning": {"models/module", "data/datamodule", "training/ray_train", "training/callbacks"},
}
# Modules that must load without Lightning, even lazily: what inference and serving run.
LIGHTNING_FREE = (
    "inference/",
    "serving/",
    "models/transformer",
    "models/ensemble",
    "models/quantiles",
    "models/factory",
)


def module_name(path: Path, root: Path) -> str:
    """lit_forecast/data/windows.py -> 'data/windows'."""
    return path.relative_to(root).with_suffix("").as_posix()


def imports_of(path: Path, package: str) -> set[str]:
    """Every absolute module name ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def violations(root: Path, package: str = "lit_forecast") -> list[str]:
    """Every import that breaks the layering or the framework rules, or closes a cycle."""
    modules = {module_name(p, root): p for p in root.rglob("*.py") if p.name != "__init__.py"}
    graph: dict[str, set[str]] = {}
    problems = []
    for name, path in sorted(modules.items()):
        layer = name.split("/")[0]
        graph[name] = set()
        for imported in imports_of(path, package):
            top = imported.split(".")[0]
            for framework, allowed in FRAMEWORKS.items():
                if top == framework and name not in allowed:
                    problems.append(f"{name} imports {imported}: {framework} belongs only in {sorted(allowed)}")
            if top != package:
                continue
            target = "/".join(imported.split(".")[1:])
            while target and target not in modules:  # `from pkg.mod import Name`: the module is the prefix
                target = target.rpartition("/")[0]
            if not target:
                continue
            graph[name].add(target)
            other = target.split("/")[0]
            if other != layer and other not in ALLOWED.get(layer, set()):
                problems.append(
                    f"{name} imports {imported}: {layer} may import only {sorted(ALLOWED.get(layer, set()))}"
                )
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles in ``graph``, each reported once from its first module found."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_package_keeps_its_layers():
    assert violations(PACKAGE) == []


def loaded_at_import(path: Path) -> set[str]:
    """Module names ``path`` imports when it is imported: top-level statements, not functions or TYPE_CHECKING."""
    found = set()

    def visit(nodes) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody)

    visit(ast.parse(path.read_text()).body)
    return found


def lightning_reached(root: Path, package: str = "lit_forecast") -> dict[str, list[str]]:
    """For each module that must stay free of Lightning, the chain of imports that loads it, if any."""
    modules = {module_name(p, root): p for p in root.rglob("*.py") if p.name != "__init__.py"}

    def targets(name: str) -> set[str]:
        out = set()
        for imported in loaded_at_import(modules[name]):
            if imported.split(".")[0] == "lightning":
                out.add("lightning")
            elif imported.split(".")[0] == package:
                target = "/".join(imported.split(".")[1:])
                while target and target not in modules:
                    target = target.rpartition("/")[0]
                if target:
                    out.add(target)
        return out

    found = {}
    for start in sorted(n for n in modules if n.startswith(LIGHTNING_FREE)):
        paths, queue = {start: [start]}, [start]
        while queue:
            name = queue.pop(0)
            for nxt in sorted(targets(name)):
                if nxt == "lightning":
                    found[start] = paths[name] + ["lightning"]
                    queue = []
                    break
                if nxt not in paths:
                    paths[nxt] = paths[name] + [nxt]
                    queue.append(nxt)
    return found


def test_inference_and_the_plain_model_never_load_lightning():
    assert lightning_reached(PACKAGE) == {}


def test_the_lightning_check_follows_imports(tmp_path):
    fake = tmp_path / "lit_forecast"
    for folder in ("models", "inference"):
        (fake / folder).mkdir(parents=True)
    (fake / "models" / "module.py").write_text("import lightning as L\n")
    (fake / "models" / "factory.py").write_text("def build():\n    from lit_forecast.models.module import M\n")
    (fake / "models" / "ensemble.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lit_forecast.models.module import M\n"
    )
    (fake / "inference" / "checkpoint.py").write_text("from lit_forecast.models import factory, ensemble\n")
    (fake / "inference" / "pipeline.py").write_text("from lit_forecast.models.module import M\n")
    assert lightning_reached(fake) == {"inference/pipeline": ["inference/pipeline", "models/module", "lightning"]}


def test_inference_runs_without_lightning(tmp_path):
    """Imported, and after loading a checkpoint and forecasting, inference has not loaded Lightning.

    Checked in a fresh interpreter: the test session itself has imported Lightning long ago.
    ``models/factory`` imports the LightningModule only inside the functions that build it for training.
    """
    import subprocess
    import sys

    import torch

    from lit_forecast import config as cfg
    from lit_forecast.models.factory import hyperparameters, model_from_hyperparameters
    from lit_forecast.spec import SeriesStats, WindowSpec

    tiny = cfg.load(cfg.DEFAULT_CONFIG.parent / "tiny.yaml")
    window = WindowSpec(tiny.data.input_window, tiny.data.horizon, tiny.data.freq)
    hparams = hyperparameters(tiny, window, {"0": SeriesStats(100.0, 10.0)})
    path = tmp_path / "checkpoint.ckpt"
    model = model_from_hyperparameters(hparams)
    torch.save(
        {
            "hyper_parameters": hparams,
            "state_dict": {"model." + k: v for k, v in model.state_dict().items()},
            "epoch": 0,
        },
        path,
    )
    code = f"""
import sys
import numpy as np
import lit_forecast.inference.pipeline
assert "lightning" not in sys.modules, "importing inference loaded Lightning"
from lit_forecast.inference.checkpoint import load_checkpoint
from lit_forecast.inference.forecaster import forecast
W, H = {window.input_window}, {window.horizon}
inputs = {{"past_target": np.zeros((2, W), np.float32), "past_time": np.zeros((2, W, 3), np.int64),
          "future_time": np.zeros((2, H, 3), np.int64), "loc": np.full(2, 100, np.float32),
          "scale": np.full(2, 10, np.float32)}}
out = forecast(load_checkpoint({str(path)!r}).model, inputs)
assert out.shape == (2, H, 3), out.shape
print(sorted(m for m in sys.modules if m == "lightning" or m.startswith(("lightning.", "pytorch_lightning"))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_layer_is_known():
    layers = {module_name(p, PACKAGE).split("/")[0] for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    assert layers <= set(ALLOWED), f"add {sorted(layers - set(ALLOWED))} to ALLOWED with the layers it may import"


def test_the_checker_catches_forbidden_imports_and_cycles(tmp_path):
    fake = tmp_path / "lit_forecast"
    for folder in ("models", "data", "training", "evaluation"):
        (fake / folder).mkdir(parents=True)
    (fake / "models" / "transformer.py").write_text("import torch\nfrom lit_forecast.data.windows import WindowSet\n")
    (fake / "data" / "windows.py").write_text("def f():\n    import ray\n")
    (fake / "evaluation" / "metrics.py").write_text("from lit_forecast.training import runs\n")
    (fake / "training" / "runs.py").write_text("from lit_forecast.training.ray_train import fit\n")
    (fake / "training" / "ray_train.py").write_text("import ray\nfrom lit_forecast.training import runs\n")
    found = "\n".join(violations(fake))
    assert "models/transformer imports lit_forecast.data.windows" in found
    assert "data/windows imports ray" in found
    assert "evaluation/metrics imports lit_forecast.training" in found
    assert "import cycle: training/runs -> training/ray_train -> training/runs" in found
    assert "training/ray_train imports ray" not in found


def test_ray_data_workers_do_not_load_torch():
    """Every Ray Data worker of the preparation imports ray_prepare to run its functions:
    torch there cost each worker 2-3 s, a third of a 1,000-zone preparation on 2 CPUs."""
    import subprocess
    import sys

    code = (
        "import sys, lit_forecast.data.ray_prepare; "
        "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
