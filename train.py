"""Fine-tune a language model with a LoReFT intervention, evaluate it, log it to MLflow.

python train.py                                  # the embedded default (SmolLM2-135M, opinion spam)
python train.py intervention.layer=8,16,24 -m    # a sweep: one MLflow run per job, in multirun/
python train.py --cfg job                        # print the composed config
"""

import os
import sys
import traceback

import hydra
from omegaconf import DictConfig

import reftlab.config.schema  # noqa: F401  (typed settings: a wrong type fails at composition, naming its key)
from reftlab.tracking import Terminated, redact, redact_logging

redact_logging()  # credentials in URLs are masked in every log line, Hydra's included


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | dict | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from reftlab.run import USER_ERRORS, run  # lazy: --help and --cfg stay fast

    def objective(metrics: dict) -> float:  # a single run's answer: validation, never test accuracy
        metric = cfg.get("optimized_metric")
        return metrics.get(metric if isinstance(metric, str) else "val_accuracy", float("nan"))

    if HydraConfig.get().mode != RunMode.MULTIRUN:
        try:
            return objective(run(cfg))
        except USER_ERRORS as e:  # bad settings or data: the message says what to change (run: FAILED)
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {redact(e)}", file=sys.stderr)
            sys.exit(2)
        except Exception:  # a bug: the traceback, with any credential in it masked (run: FAILED)
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(redact(traceback.format_exc()), file=sys.stderr)
            sys.exit(1)
    try:  # in a sweep a failed job is recorded (MLflow FAILED, status.json) and the others go on; a
        return run(cfg)  # sweeper (the search's) reads its metrics (validation ones to choose)
    except Exception:
        return None


def main_then_exit() -> None:
    """main(), then the end of the process without the interpreter's teardown of every module (4 s
    here once torch, transformers and pyreft are loaded, after the work is done). What any exit does
    still happens first, in the interpreter's order: threads are joined, exit handlers run (MLflow's,
    logging's, a sweep's summary), the output is flushed."""
    import atexit
    import threading

    try:
        main()
        code = 0
    except SystemExit as e:  # Hydra's and ours: an int, None, or a message to print
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if not isinstance(e.code, int | None):
            print(e.code, file=sys.stderr)
    except (Terminated, KeyboardInterrupt) as e:  # SIGTERM / Ctrl-C: the run (or sweep) is recorded KILLED
        print(f"stopped: {e or 'interrupted'}", file=sys.stderr)
        code = 143 if isinstance(e, Terminated) else 130
    getattr(threading, "_shutdown", lambda: None)()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main_then_exit()
