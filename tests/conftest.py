import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# One converted copy of the bundled model/tokenizer for the whole suite (and the main job).
os.environ.setdefault("REFTLAB_CACHE", str(ROOT / ".cache"))
os.environ.setdefault("TQDM_DISABLE", "1")
# Dataset repositories (Oxen) of the suite live in a temporary folder, not in data/repos.
os.environ["REFTLAB_DATA_REPOS"] = tempfile.mkdtemp(prefix="reftlab-repos-")


@pytest.fixture(autouse=True)
def no_parent_run_left_behind():
    """A test that opens a sweep's parent run in this process (the sweep callback sets its id in the
    environment for the jobs) must not hand it to the tests after it in the same worker."""
    from reftlab.sweep.parent import ENV as name

    before = os.environ.get(name)
    yield
    if before is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = before


_COMPOSED: dict = {}


def compose(*overrides: str):
    """The config `python train.py <overrides>` would run, each call a copy of its own to change.

    Hydra composes a config in ~0.25 s here, and the suite asks for a few hundred. So Hydra composes
    each set of config-group choices (`model=tiny_random`, `data=csv`, `experiment=...`) once per conf/
    folder, and the value overrides (`data.max_train=24`) go on a copy of it through Hydra's own
    parser and the function Hydra applies them with after composing: the same config, typed and
    checked the same way. Anything else (`+key`, `~key`, `group@package`, `hydra.*`), or a value
    override that fails, is composed by Hydra whole, so its error is Hydra's own."""
    import copy

    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from reftlab.config.compose import compose as reftlab_compose
    from reftlab.config.compose import conf_dir

    folder = conf_dir()
    parsed = OverridesParser.create().parse_overrides(list(overrides))

    def is_group(o) -> bool:
        return "." not in o.key_or_group and (folder / o.key_or_group).is_dir()

    def plain_value(o) -> bool:
        return o.package is None and not (
            o.is_add() or o.is_force_add() or o.is_delete() or o.is_hydra_override()
        )

    if not all(is_group(o) or plain_value(o) for o in parsed):
        return reftlab_compose(list(overrides))
    groups = tuple(o.input_line for o in parsed if is_group(o))
    key = (groups, folder)
    if key not in _COMPOSED:
        _COMPOSED[key] = reftlab_compose(list(groups))
    cfg = copy.deepcopy(_COMPOSED[key])
    try:
        ConfigLoaderImpl._apply_overrides_to_config([o for o in parsed if not is_group(o)], cfg)
    except Exception:
        return reftlab_compose(list(overrides))  # raises Hydra's own error for it
    return cfg


@pytest.fixture
def in_root(monkeypatch):
    """Run from the project root (data paths in conf/ are relative to it)."""
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store with its tables made, once per session: creating them (MLflow's
    migrations) takes seconds in each process that would otherwise do it."""
    import mlflow

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    mlflow.set_tracking_uri(None)
    return path


def store_in(folder: Path, empty_store: Path, name: str = "mlflow.db") -> str:
    """A copy of the empty store in `folder`, and its tracking URI."""
    import shutil

    shutil.copyfile(empty_store, folder / name)
    return f"sqlite:///{folder / name}"


@pytest.fixture
def mlflow_uri(tmp_path, empty_store):
    """A tracking store of this test's own: a copy of the empty store (a test of creating the
    database itself, e.g. two jobs racing to, names a file that does not exist yet)."""
    import mlflow

    yield store_in(tmp_path, empty_store)
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def tiny_job(tmp_path_factory, empty_store):
    """Whole jobs of the tiny model shared by the tests that only read what one left:
    `tiny_job(*overrides)` runs `tiny_overrides(*overrides)` once for the session, in a tracking
    store of its own, and gives (its metrics, its output folder, its tracking URI)."""
    import contextlib

    import mlflow

    from reftlab import run

    done = {}

    def job(*overrides: str):
        key = tuple(sorted(overrides))
        if key not in done:
            folder = tmp_path_factory.mktemp("job")
            uri = store_in(folder, empty_store)
            with contextlib.chdir(ROOT):
                metrics = run.run(
                    compose(*tiny_overrides(*overrides, f"mlflow.tracking_uri={uri}")),
                    output_dir=folder / "job",
                )
            mlflow.set_tracking_uri(None)
            done[key] = metrics, folder / "job", uri
        return done[key]

    return job


def tiny_overrides(*extra: str) -> list[str]:
    base = [
        "model=tiny_random",
        "intervention.layer=1",
        "data.max_train=24",
        "data.max_eval=16",
        "trainer.max_length=64",
        "trainer.batch_size=8",
        "data.max_val=16",
        "trainer.epochs=1",
    ]
    given = {e.split("=", 1)[0] for e in extra}
    return [b for b in base if b.split("=", 1)[0] not in given] + list(extra)


def runs(uri: str, experiment: str = "reftlab", sweeps: bool = False):
    """The MLflow runs of an experiment as a DataFrame (metrics, params, tags, status): the jobs, and
    with `sweeps` the sweeps' parent runs too (tag kind=sweep)."""
    import contextlib

    import mlflow

    from reftlab.locks import file_lock

    database = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
    if database is not None and not database.exists():  # nothing logged yet: never race to create it
        import pandas as pd

        return pd.DataFrame()
    # the lock reftlab's jobs take while they create the database (tracking.setup)
    with file_lock(database.with_name(f".{database.name}.lock")) if database else contextlib.nullcontext():
        mlflow.set_tracking_uri(uri)
        exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        import pandas as pd

        return pd.DataFrame()
    found = mlflow.search_runs([exp.experiment_id])
    if sweeps or "tags.kind" not in found:
        return found
    return found[found["tags.kind"] != "sweep"].reset_index(drop=True)


PYTHON = sys.executable


def one_thread() -> dict[str, str]:
    """The environment for processes that train at the same time (a parallel sweep's jobs, two jobs
    started together): one torch thread each. Two jobs of two threads each on a 2-core machine train
    ~5x slower (measured: 31 s instead of 6 s for the same 320 steps); what the tests prove does not
    depend on the thread count."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


class Done:
    """What `train_here` gives back: like subprocess.run's CompletedProcess."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def train_here(*args: str) -> Done:
    """`python train.py <args>` run in this process (a sweep's jobs too: Hydra's basic launcher runs
    them in its own process), from the project root, with what it prints and its exit status. What
    a process would take with it at its end goes with the call: the environment, Hydra's global
    state, the logging handlers Hydra adds, reftlab's in-memory prefix store, a sweep's exit hook
    (run here, as the interpreter's exit would run it)."""
    import atexit
    import contextlib
    import io
    import logging
    import runpy
    import threading

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from reftlab.engine import store

    root, env, argv, cwd = logging.getLogger(), dict(os.environ), sys.argv, os.getcwd()
    handlers, level = root.handlers[:], root.level
    at_exit, register, unregister = [], atexit.register, atexit.unregister
    run_exitfuncs, shutdown, real_exit = atexit._run_exitfuncs, threading._shutdown, os._exit

    def leave(code):
        raise SystemExit(code)

    def hold(fn, *a, **k):  # the sweep callback's exit hook runs when the "process" ends, below
        if type(getattr(fn, "__self__", None)).__name__ != "SweepCallback":
            return register(fn, *a, **k)
        at_exit.append((fn, a, k))
        return fn

    def let_go(fn):
        at_exit[:] = [(f, a, k) for f, a, k in at_exit if f != fn]
        unregister(fn)

    out, err, code = io.StringIO(), io.StringIO(), 0
    store.clear_memory()  # a fresh process has nothing in memory
    try:
        os.chdir(ROOT)
        sys.argv = ["train.py", *args]
        atexit.register, atexit.unregister = hold, let_go
        # train.py ends its process with os._exit after the exit handlers: here, the call just returns
        atexit._run_exitfuncs, threading._shutdown, os._exit = (lambda: None), (lambda: None), leave
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
            finally:
                for fn, a, k in at_exit:
                    fn(*a, **k)
    finally:
        atexit.register, atexit.unregister = register, unregister
        atexit._run_exitfuncs, threading._shutdown, os._exit = run_exitfuncs, shutdown, real_exit
        sys.argv = argv
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
        store.clear_memory()
    return Done(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def tiny4():
    """The tiny random Llama with 4 layers (a stored prefix has real layers above it; GQA: 4 query /
    2 key-value heads), built once for the session, with 24 training examples and 16 test prompts."""
    import torch

    from reftlab import models
    from reftlab.data import recipes
    from reftlab.tasks.chat import PromptBuilder

    cfg = compose("model=tiny_random", "model.num_layers=4")
    model, tokenizer, device, dtype = models.load_model_and_tokenizer(cfg.model)
    assert dtype == torch.float32
    dcfg = compose("data.max_train=24", "data.max_eval=16").data
    dcfg.path = str(ROOT / dcfg.path)
    prepared = recipes.prepare(dcfg)
    builder = PromptBuilder(tokenizer, dcfg.system_prompt, 64)
    examples = builder.examples(prepared.train["text"], prepared.train["label"])
    prompts = builder.prompts(prepared.eval["text"])
    return model, tokenizer, builder, examples, prompts


# The files whose tests take longest (whole sweeps, servers, the MLflow model CLIs) run first, so
# that `pytest -n 2 --dist loadfile` (make test) hands them out before the short ones and the two
# workers end together. Order within a file is kept; without xdist the order changes nothing proven.
LONGEST_FIRST = ("test_sweep_kills.py", "test_servers.py", "test_sweeps.py", "test_predict.py",
                 "test_fused_sweeps.py", "test_fused_slurm.py", "test_generate.py", "test_report.py", "test_reliability.py", "test_versioning.py",
                 "test_lose_nothing.py")  # fmt: skip


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort


# The suite's process ends without the interpreter's teardown of torch, transformers, pyvene and
# MLflow (~2 s here, as train.py's does): after pytest has reported and written its cache, the last
# hook exits with pytest's status. An xdist worker ends as xdist ends it.
@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    session.config.stash[EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if hasattr(config, "workerinput") or EXIT_STATUS not in config.stash:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(config.stash[EXIT_STATUS])


EXIT_STATUS = pytest.StashKey[int]()
