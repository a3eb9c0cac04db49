"""Search (hydra/sweeper=reftlab_optuna): the space as Hydra's Optuna sweeper writes it, bad settings
refused before any trial, the loop's bookkeeping (pruned, failed, resumed) with a stand-in launcher,
the per-epoch report, and on the tiny model a whole study: pruning, a failing trial, the MLflow parent
and report, and a study killed with SIGKILL mid-trial and run again."""

import json
import os
import signal
import subprocess
import time

import optuna
import pytest
from conftest import PYTHON, ROOT, compose, runs, store_in, tiny_overrides, train_here
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from reftlab.config import ConfigError
from reftlab.search import driver, space, study
from reftlab.search.trial import EpochReporter, Pruned

SPACE = [
    "intervention.layer=choice([0,3,6],[8],[2,5,8,11])",
    "intervention.rank=choice(1,2,4)",
    "trainer.lr=tag(log, interval(1e-4, 1e-2))",
    "trainer.epochs=int(interval(2, 6))",
    "trainer.warmup_ratio=interval(0, 0.2)",
    "trainer.batch_size=range(4, 17, 4)",
    "seed=7",
]


def test_the_space_reads_as_optunas_distributions_and_goes_back_as_overrides():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    found = space.parse(SPACE, compose())
    d = found.distributions
    assert d["intervention.layer"] == CategoricalDistribution(["[0,3,6]", "[8]", "[2,5,8,11]"])
    assert d["trainer.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert d["trainer.epochs"] == IntDistribution(2, 6)
    assert d["trainer.warmup_ratio"] == FloatDistribution(0.0, 0.2)
    assert d["trainer.batch_size"] == IntDistribution(4, 16, step=4)  # range's stop excluded
    assert found.fixed == ["seed=7"]
    lines = found.overrides({"intervention.layer": "[2,5,8,11]", "intervention.rank": 2, "trainer.lr": 0.003,
                             "trainer.epochs": 3, "trainer.warmup_ratio": 0.1, "trainer.batch_size": 8})  # fmt: skip
    cfg = compose(*lines)  # what a trial's job composes: a layer set is a list again
    assert list(cfg.intervention.layer) == [2, 5, 8, 11] and cfg.trainer.lr == 0.003 and cfg.seed == 7
    later = space.parse(
        [
            "intervention.rank=choice(1,2)",
            "trainer.lr=0.01",
            "intervention.rank=4",
            "trainer.lr=interval(0.001, 0.1)",
        ]
    )
    assert later.fixed == ["intervention.rank=4"] and list(later.distributions) == [
        "trainer.lr"
    ]  # the last line wins
    folds = space.parse(["data.fold=0,1,2", "intervention.rank=choice(1,4)"], compose("folds=hotel5"))
    assert folds.instances == [0, 1, 2] and list(folds.distributions) == ["intervention.rank"]


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ("trainer.lr=interval(0.01, 0.001)", "inverted interval"),
        ("trainer.lr=interval(0.01, 0.01)", "empty interval"),
        ("trainer.lr=tag(log, interval(0, 0.1))", "log scale needs low > 0"),
        ("intervention.rank=choice()", "empty choice"),
        ("intervention.rank=choice(1,1,2)", "given twice"),
        ("trainer.epochs=range(5, 5)", "empty range"),
        ("trainer.learning_rate=choice(1,2)", "'trainer.learning_rate' is not a setting"),
    ],
)
def test_a_bad_space_is_named_before_any_trial(line, said):
    with pytest.raises(ConfigError, match=said) as e:
        space.parse([line], compose())
    assert line.split("=")[0] in str(e.value)


def test_objectives_are_validation_metrics_never_test_ones():
    assert study.objectives("val_accuracy", "maximize", ("accuracy", "f1")) == (
        ["val_accuracy"],
        ["maximize"],
    )
    two = study.objectives(["val_accuracy", "trainable_params"], "maximize", ("accuracy",))
    assert two == (["val_accuracy", "trainable_params"], ["maximize", "minimize"])
    assert study.objectives(["val_log_loss", "train_seconds"], None, ("log_loss",))[1] == [
        "minimize",
        "minimize",
    ]
    with pytest.raises(ConfigError, match="never on test"):
        study.objectives("accuracy", "maximize", ("accuracy",))
    with pytest.raises(ConfigError, match="val_accuracy, val_f1"):
        study.objectives("val_bleu", "maximize", ("accuracy", "f1"))
    with pytest.raises(ConfigError, match="direction"):
        study.objectives("val_accuracy", "upward", ("accuracy",))


def test_samplers_and_pruners_are_checked_by_name_and_fit():
    assert isinstance(study.sampler({"name": "tpe", "seed": 1}, 1), optuna.samplers.TPESampler)
    assert isinstance(study.sampler({"name": "nsga2"}, 2), optuna.samplers.NSGAIISampler)
    with pytest.raises(ConfigError, match="tpe, random, nsga2"):
        study.sampler({"name": "cmaes"}, 1)
    assert isinstance(
        study.pruner({"name": "successive_halving"}, 1, False), optuna.pruners.SuccessiveHalvingPruner
    )
    assert study.pruner({"name": "none"}, 2, False) is None
    with pytest.raises(ConfigError, match="cannot prune"):
        study.pruner({"name": "median"}, 2, False)
    with pytest.raises(ConfigError, match="fold by fold"):
        study.pruner({"name": "wilcoxon"}, 1, folds=False)
    assert isinstance(study.pruner({"name": "wilcoxon"}, 1, folds=True), optuna.pruners.WilcoxonPruner)


def test_a_storage_that_cannot_open_is_named_with_its_password_masked():
    url = "postgresql+psycopg://searcher:s3cret-pw@127.0.0.1:9/studies"
    with pytest.raises(ConfigError) as e:
        study.open_storage(url)
    assert (
        "cannot be opened" in str(e.value)
        and "s3cret-pw" not in str(e.value)
        and "127.0.0.1:9" in str(e.value)
    )


@pytest.mark.slow
def test_a_bad_search_stops_the_command_before_its_parent_run_opens(tmp_path, empty_store):
    uri = store_in(tmp_path, empty_store)
    done = train_here("-m", "hparams_search=loreft", *tiny_overrides(f"mlflow.tracking_uri={uri}"),
                      f"hydra.sweep.dir={tmp_path / 'sweep'}", "optimized_metric=accuracy")  # fmt: skip
    assert done.returncode == 2 and "never on test" in done.stderr
    assert runs(uri, sweeps=True).empty  # no parent, no trial


# --- the loop, with a stand-in launcher -------------------------------------------------------------


class FakeLauncher:
    """Runs a 'job' as a function of its overrides: returns its metrics (None: failed)."""

    def __init__(self, job):
        self.job, self.launched = job, []

    def launch(self, jobs, initial_job_idx):
        out = []
        for overrides in jobs:
            values = dict(o.split("=", 1) for o in overrides)
            self.launched.append(values)
            ret = JobReturn(status=JobStatus.COMPLETED, cfg=OmegaConf.create({"trainer": {"epochs": 4}}))
            ret.return_value = self.job(values)
            out.append(ret)
        return out


def search_with(tmp_path, job, n_trials=6, n_jobs=2, pruner="none", extra=(), **conf):
    from reftlab.config.compose import compose as with_hydra

    cfg = with_hydra([f"hydra.sweep.dir={tmp_path / 'sweep'}", *extra], return_hydra_config=True)
    settings = {"n_trials": n_trials, "n_jobs": n_jobs, "direction": "maximize", "max_failure_rate": 0.5,
                "sampler": {"name": "random", "seed": 3}, "pruner": {"name": pruner},
                "storage": str(tmp_path / "study.journal"), "study_name": "t",
                "params": {**(cfg.hydra.sweeper.get("params") or {}),  # a folds overlay's data.fold
                           "intervention.rank": "choice(1,2,4)", "trainer.lr": "interval(0.001, 0.01)"}} | conf  # fmt: skip
    launcher = FakeLauncher(job)
    search = driver.Search(settings, cfg, launcher)
    search.prepare([])
    return search, launcher


def test_trials_are_told_their_validation_metric_and_the_best_is_chosen_on_it(tmp_path):
    # test accuracy is high where validation is low: the study must choose by validation only
    def job(v):
        rank = int(v["intervention.rank"])
        return {"val_accuracy": rank / 10, "accuracy": 1 - rank / 10, "trainable_params": 100.0 * rank}

    search, launcher = search_with(tmp_path, job)
    search.run()
    trials = search.study.trials
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    assert len(launcher.launched) == 6 and {v["search.trial"] for v in launcher.launched} == {
        str(i) for i in range(6)
    }
    best = search.study.best_trial
    assert best.params["intervention.rank"] == max(t.params["intervention.rank"] for t in trials)
    assert best.user_attrs["accuracy"] == pytest.approx(1 - best.values[0])  # reported, never chosen on
    assert all(v["search.study"] == "t" for v in launcher.launched)


def test_a_failing_trial_fails_alone_and_too_many_failures_stop_the_study(tmp_path):
    search, _ = search_with(
        tmp_path, lambda v: None if float(v["trainer.lr"]) < 0.005 else {"val_accuracy": 0.5}
    )
    search.run()
    counts = study.states(search.study)
    assert counts["fail"] >= 1 and counts["complete"] >= 1 and counts["fail"] + counts["complete"] == 6
    worse, _ = search_with(tmp_path / "b", lambda v: None, n_trials=10, max_failure_rate=0.3)
    with pytest.raises(driver.TooManyFailures, match="max_failure_rate"):
        worse.run()
    assert study.states(worse.study)["fail"] < 10  # stopped early


def test_a_parent_run_id_from_another_store_is_warned_about_and_the_study_runs(tmp_path, monkeypatch, caplog):
    from reftlab.sweep import parent

    monkeypatch.setenv(parent.ENV, "d692ee9334f047199f13e7f00b881ccc")  # e.g. left by an earlier sweep
    search, _ = search_with(tmp_path, lambda v: {"val_accuracy": 0.5}, n_trials=2)
    with caplog.at_level("WARNING"):
        search.run()
    assert len(study.counted(search.study)) == 2
    assert "d692ee9334f047199f13e7f00b881ccc is not a run of this tracking store" in caplog.text


def test_a_pruned_trial_counts_and_its_saved_epochs_are_summed(tmp_path):
    def job(v):
        if float(v["trainer.lr"]) < 0.005:
            return {"val_accuracy": 0.4, "pruned": 1.0, "epochs_done": 1.0, "epochs_saved": 3.0}
        return {"val_accuracy": 0.6, "accuracy": 0.55}

    search, _ = search_with(tmp_path, job, n_trials=8)
    search.run()
    pruned = [t for t in search.study.trials if t.state.name == "PRUNED"]
    assert pruned and all(t.params["trainer.lr"] < 0.005 for t in pruned)
    assert sum(t.user_attrs["epochs_saved"] for t in search.study.trials) == 3.0 * len(pruned)
    assert len(study.counted(search.study)) == 8


def test_trials_with_folds_run_every_fold_and_the_value_is_their_mean(tmp_path):
    def job(v):
        return {"val_accuracy": 0.5 + 0.1 * int(v["data.fold"])}

    search, launcher = search_with(tmp_path, job, n_trials=2, extra=("folds=hotel5",))
    search.run()
    assert [t.values[0] for t in search.study.trials] == pytest.approx([0.7, 0.7])
    assert sorted(int(v["data.fold"]) for v in launcher.launched) == sorted(list(range(5)) * 2)
    assert all(v["search.per_epoch"] == "false" for v in launcher.launched)


def test_a_trial_left_running_by_a_dead_worker_is_asked_again_and_the_count_is_kept(tmp_path):
    search, launcher = search_with(tmp_path, lambda v: {"val_accuracy": 0.5}, n_trials=4)
    dead = subprocess.run([PYTHON, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = search.study.ask(search.space.distributions)  # what a killed driver left RUNNING
    for k, v in study.worker().items():
        search.study._storage.set_trial_system_attr(orphan._trial_id, k, v)
    search.study._storage.set_trial_system_attr(orphan._trial_id, "reftlab:pid", int(dead.stdout))
    again, _ = search_with(tmp_path, lambda v: {"val_accuracy": 0.5}, n_trials=4)  # the same command again
    again.run()
    trials = again.study.trials
    assert trials[0].state.name == "FAIL" and trials[0].system_attrs[study.KILLED]
    retried = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(retried) == 1 and retried[0].params == trials[0].params and retried[0].state.name == "COMPLETE"
    assert len(study.counted(again.study)) == 4 and study.states(again.study)["killed"] == 1


def test_a_live_workers_trial_is_left_to_it(tmp_path):
    search, _ = search_with(tmp_path, lambda v: {"val_accuracy": 0.5}, n_trials=2)
    live = search.study.ask(search.space.distributions)
    for k, v in study.worker().items():  # this very process: alive
        search.study._storage.set_trial_system_attr(live._trial_id, k, v)
    search.study._storage.set_trial_system_attr(live._trial_id, "reftlab:pid", os.getppid())
    assert study.recover(search.study) == []


# --- the job side ----------------------------------------------------------------------------------


def test_a_trial_reports_each_epoch_and_is_pruned_when_its_study_says_so(tmp_path):
    s = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.6))
    trial = s.ask()
    report = EpochReporter(trial, "val_accuracy", epochs=5)
    report(1, {"accuracy": 0.7})
    with pytest.raises(Pruned) as e:
        report(2, {"accuracy": 0.5})
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {1: 0.7, 2: 0.5}
    assert e.value.metrics() == {"val_accuracy": 0.5, "pruned": 1.0, "epochs_done": 2.0, "epochs_saved": 3.0}


def test_the_training_loop_calls_back_between_epochs_and_not_after_the_last():
    import torch

    from reftlab.engine.loop import train

    w = torch.nn.Parameter(torch.zeros(1))
    cfg = OmegaConf.create({"epochs": 3, "batch_size": 2, "grad_accum": 1, "lr": 0.1, "weight_decay": 0.0,
                            "warmup_ratio": 0.0, "group_by_length": True})  # fmt: skip
    seen = []

    def step(groups, denominator):
        loss = (w - 1).pow(2).sum()
        loss.backward()
        return [loss.item()] * len(groups)

    out = train(
        [w], [([1], [2])] * 4, cfg, 0, step, progress=False, on_epoch=lambda e: seen.append((e, w.item()))
    )
    assert [e for e, _ in seen] == [1, 2] and out["steps"] == 6
    assert seen[0][1] != seen[1][1]  # called with the weights of that epoch


# --- on the tiny model -----------------------------------------------------------------------------

TINY = [
    "data.max_train=24",
    "trainer.epochs=3",
    "hydra.sweeper.sampler.seed=5",
    "hydra.sweeper.pruner.n_startup_trials=1",
    "intervention.layer=choice([0],[1],[0,1])",
    "intervention.rank=choice(1,2)",
    "intervention.positions=choice(l1,l3)",
    "trainer.lr=tag(log, interval(1e-3, 1e-1))",
    "trainer.epochs=int(interval(2, 4))",
]


@pytest.mark.slow
def test_a_study_on_the_tiny_model_is_one_parent_with_a_child_per_trial_and_a_report(tmp_path, empty_store):
    uri = store_in(tmp_path, empty_store)
    done = train_here("-m", "hparams_search=loreft", *tiny_overrides(f"mlflow.tracking_uri={uri}", *TINY),
                      f"hydra.sweep.dir={tmp_path / 'sweep'}", f"hydra.sweeper.storage={tmp_path / 's.journal'}",
                      "hydra.sweeper.n_trials=5", "hydra.sweeper.n_jobs=2")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    found = runs(uri, sweeps=True)
    parent = found[found["tags.kind"] == "sweep"].iloc[0]
    trials = found[found["tags.kind"] != "sweep"]
    assert parent["status"] == "FINISHED" and parent["tags.kind.search"] == "optuna"
    assert (trials["tags.mlflow.parentRunId"] == parent["run_id"]).all()
    assert sorted(trials["params.search.trial"].astype(int)) == list(range(5))
    assert (trials["status"] == "FINISHED").all()
    pruned = trials[trials.get("tags.pruned", "").eq("true")] if "tags.pruned" in trials else trials.iloc[:0]
    assert parent["metrics.trials_complete"] + parent["metrics.trials_pruned"] == 5
    assert parent["metrics.trials_pruned"] == len(pruned)
    assert pruned["metrics.accuracy"].isna().all() if "metrics.accuracy" in pruned else True  # never tested
    complete = trials[~trials.index.isin(pruned.index)]
    assert parent["metrics.study_best_val_accuracy"] == complete["metrics.val_accuracy"].max()
    assert "params.search.space.trainer.lr" in parent and parent["params.search.sampler"].startswith("{")
    report = (tmp_path / "sweep" / "report" / "report.md").read_text()
    assert "## Search" in report and "search_pareto.png" in report
    assert (tmp_path / "sweep" / "report" / "search_history.png").stat().st_size > 5000
    assert "search loreft-" in done.stderr and "best trial" in done.stderr


@pytest.mark.slow
def test_a_failing_trial_is_a_failed_child_and_the_study_goes_on(tmp_path, empty_store):
    uri = store_in(tmp_path, empty_store)
    done = train_here("-m", "hparams_search=loreft", *tiny_overrides(f"mlflow.tracking_uri={uri}"),
                      f"hydra.sweep.dir={tmp_path / 'sweep'}", f"hydra.sweeper.storage={tmp_path / 's.journal'}",
                      "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler.name=random", "hydra.sweeper.sampler.seed=0",
                      "hydra.sweeper.pruner.name=none", "hydra.sweeper.max_failure_rate=1", "intervention.layer=choice([1],[9])")  # fmt: skip
    trials = runs(uri)
    failed = trials[trials["status"] == "FAILED"]
    assert len(trials) == 4 and len(failed) >= 1 and (trials["status"] == "FINISHED").any()
    assert (failed["params.intervention.layer"] == "[9]").all()
    assert done.returncode == 1  # the sweep says a job failed, after the study ran every trial
    assert "1 failed" in done.stderr or f"{len(failed)} failed" in done.stderr


@pytest.mark.slow
def test_a_study_killed_mid_trial_and_run_again_completes_without_duplicate_runs(tmp_path, empty_store):
    uri = store_in(tmp_path, empty_store)
    sweep = tmp_path / "sweep"
    args = [PYTHON, "train.py", "-m", "hparams_search=loreft",
            *tiny_overrides(f"mlflow.tracking_uri={uri}", *TINY, "trainer.epochs=int(interval(3, 5))",
                            "data.max_train=48"),
            f"hydra.sweep.dir={sweep}", f"hydra.sweeper.storage={tmp_path / 's.journal'}",
            "hydra.sweeper.n_trials=4", "hydra.sweeper.pruner.name=none"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    status = sweep / "1" / "status.json"
    try:
        deadline = time.time() + 300
        while not (status.exists() and json.loads(status.read_text())["status"] == "running"):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # the driver and its (in-process) trial, mid-trial
        proc.wait(timeout=60)
    finally:
        proc.kill()
    before = runs(uri)
    assert (before["status"] == "RUNNING").sum() == 1  # trial 1's run, left by the kill
    # the same command again (a new sweep folder, as its timestamp would give)
    args = [a.replace(f"hydra.sweep.dir={sweep}", f"hydra.sweep.dir={tmp_path / 'again'}") for a in args]
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    s = optuna.load_study(
        study_name=study_of(sweep), storage=study.open_storage(f"journal://{tmp_path / 's.journal'}")
    )
    assert len(study.counted(s)) == 4 and study.states(s)["killed"] == 1
    after = runs(uri)
    finished = after[after["status"] == "FINISHED"]
    settings = [c for c in finished if c.startswith("params.") and not c.startswith("params.search.")]
    assert len(finished) == 4 and not finished.duplicated(settings).any()  # none run twice
    assert set(after["status"]) == {"FINISHED", "KILLED"} and (after["status"] == "KILLED").sum() == 1
    assert len(set(after["tags.mlflow.parentRunId"])) == 1  # one parent: the same study's
    assert "0 skipped" in again.stderr  # the continued study proposes new trials, not the first run's


def study_of(sweep) -> str:
    import yaml

    overrides = yaml.safe_load((sweep / "0" / ".hydra" / "overrides.yaml").read_text())
    return next(o.split("=", 1)[1] for o in overrides if o.startswith("search.study="))


def test_two_objectives_give_a_pareto_front_of_accuracy_and_parameters(tmp_path):
    def job(v):  # more rank: more accuracy and more parameters
        rank = int(v["intervention.rank"])
        return {"val_accuracy": 0.5 + rank / 10, "trainable_params": 1000.0 * rank}

    search, _ = search_with(tmp_path, job, n_trials=8, sampler={"name": "nsga2", "seed": 1},
                            extra=("optimized_metric=[val_accuracy,trainable_params]",))  # fmt: skip
    assert search.directions == ["maximize", "minimize"]
    search.run()
    front = {t.params["intervention.rank"] for t in search.study.best_trials}
    assert front == {
        t.params["intervention.rank"] for t in search.study.trials
    }  # each rank trades one for the other


def test_a_search_setting_on_the_command_line_makes_another_sweep_but_its_trial_count_does_not():
    from reftlab.config.compose import compose as with_hydra
    from reftlab.sweep.parent import sweep_key

    def key(*hydra):
        cfg = with_hydra(["hparams_search=loreft", *hydra], return_hydra_config=True)
        return sweep_key(cfg)

    assert key() == key("hydra.sweeper.n_trials=80", "hydra.sweeper.n_jobs=4")  # the same study, continued
    assert key() != key("hydra.sweeper.pruner.name=none") != key("hydra.sweeper.sampler.seed=3")


@pytest.mark.slow
def test_a_batch_of_trials_that_share_a_prefix_cache_trains_fused(tmp_path, empty_store):
    uri = store_in(tmp_path, empty_store)
    done = train_here("-m", "hparams_search=loreft", "hydra/launcher=fused", *tiny_overrides(f"mlflow.tracking_uri={uri}"),
                      f"hydra.sweep.dir={tmp_path / 'sweep'}", f"hydra.sweeper.storage={tmp_path / 's.journal'}",
                      "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=3", "intervention.positions=l3",
                      "intervention.layer=choice([1])", "trainer.epochs=2")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train x3" in done.stderr  # one training loop for the three
    trials = runs(uri)
    assert len(trials) == 3 and (trials["status"] == "FINISHED").all()
    assert trials["tags.fused_group"].nunique() == 1 and (trials["tags.fused_size"] == "3").all()
    assert trials["params.trainer.lr"].nunique() == 3  # three trials, each its own run and weights


def test_the_validation_between_epochs_builds_its_prefix_with_the_models_own_attention():
    """A strategy trains under its own attention (few queries over a stored prefix, no causal mask);
    the validation scored between epochs builds its prompts' prefix cache with the model's own, or its
    keys would be wrong (they were: 16 of 19 apart in bf16 on the bundled model)."""
    import torch

    from reftlab import methods, models
    from reftlab.engine.prefix import build
    from reftlab.engine.strategies import Context
    from reftlab.engine.suffix import attention_implementation

    model, tok, _, _ = models.load_model_and_tokenizer(compose("model=tiny_random").model)
    seqs = [tok("The room was clean and the staff kind. " * k)["input_ids"] for k in (3, 2)]
    expected = build(model, 0, seqs, [3, 3], tok.pad_token_id, progress=False)
    ctx = Context(model, methods.get("none"), None, None, tok.pad_token_id)
    got = []
    ctx.on_epoch = lambda epoch: got.append(build(model, 0, seqs, [3, 3], tok.pad_token_id, progress=False))
    with attention_implementation(model):  # as a strategy's training holds it
        inside = model.config._attn_implementation
        ctx.between_epochs(1)
        assert model.config._attn_implementation == inside  # the strategy's again for the next epoch
    torch.testing.assert_close(got[0].keys, expected.keys)
    torch.testing.assert_close(got[0].values, expected.values)


def test_two_workers_share_one_study_and_run_each_trial_once(tmp_path):
    """Worker B starts while worker A's first batch runs (its trials RUNNING, its process alive): B
    leaves them to A, asks only what is left, and together they run the planned trials once each."""
    seen = {}

    def job_b(v):
        return {"val_accuracy": 0.5}

    def job_a(v):
        if "b" not in seen:  # B starts, and runs to its end, while A's first batch runs
            seen["b"], launcher_b = search_with(tmp_path, job_b, n_trials=6)
            seen["b"].run()
            seen["b trials"] = [x["search.trial"] for x in launcher_b.launched]
        return {"val_accuracy": 0.6}

    a, launcher_a = search_with(tmp_path, job_a, n_trials=6)
    a.run()
    numbers = [x["search.trial"] for x in launcher_a.launched] + seen["b trials"]
    assert sorted(map(int, numbers)) == list(range(6))  # every trial once, across the two workers
    assert len(seen["b trials"]) == 4 and len(study.counted(a.study)) == 6
