"""Methods are plugins: a new method is one class (plus a YAML); run.py, validation, resume and the
report need no edit to run it, log it and compare it."""

import numpy as np
import pytest
from conftest import compose, runs, tiny_overrides

from reftlab import methods, run, validate
from reftlab.report.render import write
from reftlab.report.runs import load_runs


@methods.register
class LengthBaseline(methods.Method):
    """A toy baseline: long texts are deceptive (scores: length minus the training median)."""

    names = ("toy_length",)
    display = "toy length"
    trains = False
    needs_model = False
    has_layers = False

    def validate(self, icfg, n_layers, model_name):
        if icfg.get("scale", 1.0) <= 0:
            raise validate.ConfigError(f"intervention.scale={icfg.scale!r} is not valid: it must be > 0")

    def run(self, job):
        median = np.median([len(t) for t in job.prepared.train["text"]])
        scores = np.array([len(t) - median for t in job.texts], dtype=float) * job.cfg.intervention.scale
        return methods.Outcome(scores, {"train_seconds": 0.0, "trainable_params": 1})


def toy_config(tmp_path, mlflow_uri, *extra):
    folder = tmp_path / "conf" / "intervention"
    folder.mkdir(parents=True)
    (folder / "toy_length.yaml").write_text("method: toy_length\nscale: 1.0\n")
    overrides = [o for o in tiny_overrides() if not o.startswith("intervention.")]  # it has no layer
    return compose(*overrides, "intervention=toy_length", f"mlflow.tracking_uri={mlflow_uri}", *extra,
                   f"hydra.searchpath=[file://{tmp_path / 'conf'}]")  # fmt: skip


@pytest.mark.slow  # a whole job
def test_a_new_method_is_one_class_and_one_yaml(in_root, mlflow_uri, tmp_path):
    assert "toy_length" in methods.names()
    metrics = run.run(toy_config(tmp_path, mlflow_uri), output_dir=tmp_path / "job")
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["val_accuracy"] <= 1
    (row,) = runs(mlflow_uri).to_dict("records")
    assert row["status"] == "FINISHED" and row["tags.method"] == "toy_length"
    assert row["tags.mlflow.runName"] == "toy_length-opinion_spam"
    # it trains nothing: another seed is the same job (resume skips it)
    run.run(toy_config(tmp_path / "again", mlflow_uri, "seed=7"), output_dir=tmp_path / "job2")
    assert len(runs(mlflow_uri)) == 1
    result = write(load_runs("reftlab", mlflow_uri), tmp_path / "r", "r")
    assert "toy length" in (tmp_path / "r" / "report.md").read_text() and result["finished"] == 1


@pytest.mark.slow  # a whole job
def test_a_new_methods_bad_setting_is_named_and_recorded(in_root, mlflow_uri, tmp_path):
    with pytest.raises(validate.ConfigError, match=r"intervention.scale=-1.0 is not valid"):
        run.run(toy_config(tmp_path, mlflow_uri, "intervention.scale=-1.0"), output_dir=tmp_path / "bad")
    assert runs(mlflow_uri)["status"].tolist() == ["FAILED"]


def test_unknown_method_names_the_registered_ones():
    with pytest.raises(
        validate.ConfigError,
        match=r"intervention.method='nope' is not valid: choose one of \[.*'loreft'.*'lora'.*'tfidf'",
    ):
        methods.get("nope")


def import_graph() -> dict[str, set[str]]:
    """reftlab's modules and what each imports of the package (module- and function-level imports)."""
    import ast

    from conftest import ROOT

    src = ROOT / "src"
    modules = {".".join(f.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): f
               for f in (src / "reftlab").rglob("*.py")}  # fmt: skip
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(max(node.level - 1, 0)):
                    base = base.rsplit(".", 1)[0]
                target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
                deps |= {t for t in [target, *(f"{target}.{a.name}" for a in node.names)] if t in modules}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in modules}
        graph[name] = deps - {name}
    assert not graph.pop("reftlab", set())  # the package's own __init__ maps the wings and imports none,
    return {name: deps - {"reftlab"} for name, deps in graph.items()}  # so `from . import x` needs x only


def cycles(graph: dict[str, set[str]]) -> list[str]:
    def reaches(start, goal, seen):
        return any(d == goal or (d not in seen and reaches(d, goal, seen | {d})) for d in graph[start])

    return [m for m in graph if reaches(m, m, {m})]


def test_no_module_of_the_package_imports_one_that_imports_it_back():
    """The import graph of reftlab (module- and function-level imports) has no cycle."""
    graph = import_graph()
    assert not cycles(graph), f"modules on an import cycle: {cycles(graph)}"
    assert "reftlab.methods.reft" in graph and "reftlab.run" in graph  # the walk saw the package


def test_the_wings_form_a_small_graph_with_no_arrow_back_up():
    """Counting a folder (a wing: engine/, methods/, data/, ...) as one node, the package is at most
    18 nodes, and no wing imports one that imports it back (directly or through others)."""
    wing = lambda module: ".".join(module.split(".")[:2])  # noqa: E731
    wings: dict[str, set[str]] = {}
    for module, deps in import_graph().items():
        wings.setdefault(wing(module), set()).update(wing(d) for d in deps if wing(d) != wing(module))
    assert len(wings) <= 18, sorted(wings)
    assert not cycles(wings), f"wings on an import cycle: {cycles(wings)}"
    assert {"reftlab.engine", "reftlab.methods", "reftlab.data", "reftlab.report", "reftlab.serving"} <= set(
        wings
    )
    assert "reftlab.methods" not in wings["reftlab.engine"]  # the engine asks the method it is handed
