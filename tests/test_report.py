"""The report (`reftlab.report`): grouping, statistics, the choice on validation, reference lines,
plots, and one list of sections written as Markdown and HTML."""

import mlflow
import pandas as pd
import pytest
from conftest import runs, train_here

from reftlab.report import cli, render, tables
from reftlab.report.runs import baseline_runs, load_runs, method_name


def test_one_list_of_sections_is_written_as_markdown_and_as_html():
    frame = pd.DataFrame({"layer": [8, 15], "note": ["", "**chosen** (best validation)"]})
    doc = [
        render.Section("a <title>", [render.Text(["2 runs."]), render.Text(["**Caution: few**"], "caution")], 1),
        render.Section("Results", [render.Text(["**Chosen** on validation"], "note"), render.Table(frame, frozenset({1}))]),
        render.Section("Plots", [render.Images([("accuracy_vs_layer.png", "accuracy vs layer")])]),
        render.Section("Settings", [render.Settings({"trainer.lr": 0.004})]),
    ]  # fmt: skip
    md, page = render.markdown(doc), render.html(doc)
    assert md.startswith("# a <title>\n\n2 runs.\n\n**Caution: few**\n\n## Results\n")
    assert "| **15** | **chosen** (best validation) |" in md and "| 8 |  |" in md
    assert "![accuracy vs layer](accuracy_vs_layer.png)" in md and "- `trainer.lr` = 0.004" in md
    assert "<title>a &lt;title&gt;</title>" in page and "<h1>a &lt;title&gt;</h1>" in page
    assert "<p>2 runs.</p>" in page and "<p class='note'><b>Caution: few</b></p>" in page
    assert "<p class='note'>Chosen on validation</p>" in page and "**" not in page
    assert render.html_text("`a<b>` and `c`") == "<code>a&lt;b&gt;</code> and <code>c</code>"
    assert "<tr class='chosen'><td>15</td><td>chosen (best validation)</td></tr>" in page
    assert "<img src='accuracy_vs_layer.png' alt='accuracy vs layer'>" in page
    assert "<li><code>trainer.lr</code> = 0.004</li>" in page and page.endswith("</body></html>")


def fake_run(method, accuracy, layer=None, rank=None, seed=1, params=100, seconds=10.0, status="FINISHED",
             val=None, lr=0.004, data="d1", budget=None):  # fmt: skip
    """A run logged the way run.py logs one (params, tags, metrics), with chosen numbers."""
    with mlflow.start_run() as active:
        mlflow.set_tags({"method": method, "data_hash": data, "model": "tiny"})
        mlflow.log_params({"intervention.method": method, "intervention.layer": layer, "intervention.rank": rank,
                           "trainer.lr": lr, "seed": seed, "mlflow.experiment": "x", "run_name": f"r{seed}"})  # fmt: skip
        mlflow.log_params(
            {"data.max_train": None, "trainer.max_length": 512, "trainer.epochs": 5, **(budget or {})}
        )
        if status == "FINISHED":
            tp = round(accuracy * 50)
            mlflow.log_metrics({"accuracy": accuracy, "val_accuracy": accuracy if val is None else val,
                                "f1": accuracy, "trainable_params": params, "train_seconds": seconds,
                                "peak_memory_mb": 1000.0, "trainable_percent": 0.01,
                                "tp": tp, "fn": 50 - tp, "tn": tp, "fp": 50 - tp})  # fmt: skip
        else:
            mlflow.set_tag("error", "ConfigError: boom")
            mlflow.end_run(status=status)
    return active.info.run_id


@pytest.mark.slow
def test_report_on_synthetic_runs(tmp_path, mlflow_uri):
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("cmp")
    for seed, acc in ((1, 0.70), (2, 0.74)):
        fake_run("loreft", acc, layer=15, rank=4, seed=seed, params=4612, seconds=300)
        fake_run("lora", acc - 0.02, layer="None", rank=8, seed=seed, params=460800, seconds=420)
    fake_run("loreft", 0.66, layer=8, rank=4, params=4612, seconds=300)
    fake_run("none", 0.52, params=0, seconds=0)
    fake_run("tfidf", 0.90, params=50000, seconds=2)
    failed = fake_run("loreft", 0, layer=99, rank=4, status="FAILED")
    out = tmp_path / "report"
    assert cli.main(["--experiment", "cmp", "--tracking-uri", mlflow_uri, "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    # 2 seeds (70, 74% of 100 reviews): not Student t's ± 25.4 over them but the bootstrap over their
    # reviews, about ± 1.96 * sqrt(.70 * .30 / 100 + .74 * .26 / 100) / 2 = 6.2 points, marked
    assert "| LoReFT | 15 | 2 | 72.0% | 72.0% [66.0, 78.0]† |" in md
    # rank is fixed per method (LoReFT 4, LoRA 8): no column, no plot; listed under each method
    assert "## LoRA settings\n\n- `intervention.rank` = 8" in md
    assert "## LoReFT settings\n\n- `intervention.rank` = 4" in md
    assert failed in md and "ConfigError: boom" in md  # failed runs are listed
    assert all(m in md for m in ("LoReFT", "LoRA", "zero-shot", "TF-IDF"))
    assert "4,612" in md and "460,800" in md and "300 s" in md  # counts as integers, seconds rounded
    html = (out / "report.html").read_text()
    assert (
        "<style>" in html and "<table>" in html and "4612.0" not in html and "0.72000" not in html
    )  # formatted
    # Only the plots of what varies within a method: the layer; and parameters and train times;
    # and the groups against the reference (the default settings), paired
    plots = sorted(p.name for p in out.glob("*.png"))
    assert plots == [
        "accuracy_vs_layer.png",
        "accuracy_vs_train_time.png",
        "accuracy_vs_trainable_params.png",
        "difference_vs_reference.png",
    ]
    table = runs(mlflow_uri, "cmp")
    summary = table[table.get("tags.kind") == "report"]
    assert len(summary) == 1
    client = mlflow.tracking.MlflowClient(mlflow_uri)
    logged = {a.path for a in client.list_artifacts(summary["run_id"].iloc[0], "report")}
    assert "report/report.html" in logged and "report/accuracy_vs_layer.png" in logged


@pytest.mark.slow
def test_report_chooses_on_validation_never_on_test(tmp_path, mlflow_uri):
    """Layer 8 is best on test, layer 15 on validation: the report must choose 15 and say so."""
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("sel")
    for seed in (1, 2, 3):
        fake_run("loreft", 0.90, layer=8, rank=4, seed=seed, val=0.70)
        fake_run("loreft", 0.80, layer=15, rank=4, seed=seed, val=0.85)
        fake_run("loreft", 0.75, layer=22, rank=4, seed=seed, val=0.80)
    result = render.write(load_runs("sel", mlflow_uri), tmp_path / "r", "sel")
    chosen = result["table"].loc[result["chosen"]["overall"]]
    assert chosen["intervention.layer"] == "15" and chosen["accuracy"] == pytest.approx(0.80)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "**Chosen on the validation split**" in md and "layer=15" in md
    assert "| **15** | **3** |" in md  # the chosen row is bold, not the test-best layer 8
    assert "| 8 | 3 |" in md


@pytest.mark.slow
def test_reference_lines_from_other_experiments_only_at_the_same_budget(tmp_path, mlflow_uri):
    """LoRA and TF-IDF from another experiment are drawn beside a LoReFT ablation only where they
    saw the same data caps and prompt length (and, LoRA, trained as many epochs)."""
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("other")
    small = {"data.max_train": 512, "trainer.max_length": 256, "trainer.epochs": 2}
    fake_run("lora", 0.66, rank=8, val=0.99, budget=small)  # best on validation, but a smaller budget
    fake_run("tfidf", 0.85, val=0.99, budget=small)
    fake_run("lora", 0.81, rank=8, val=0.80)  # the same budget as the ablation
    fake_run("tfidf", 0.88, val=0.86, budget={"trainer.epochs": 1})  # TF-IDF has no epochs
    fake_run("lora", 0.77, rank=8, val=0.95, budget={"trainer.epochs": 1})  # LoRA trained less
    mlflow.set_experiment("abl")
    for layer in (3, 15):
        fake_run("loreft", 0.80, layer=layer, rank=4)
    others = baseline_runs({"d1"})
    render.write(load_runs("abl", mlflow_uri), tmp_path / "r", "abl", others)
    md = (tmp_path / "r" / "report.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("Reference lines:"))
    assert "LoRA (best by validation) 81.0%" in line and "TF-IDF 88.0%" in line
    assert "66.0%" not in line and "85.0%" not in line and "77.0%" not in line


@pytest.mark.slow
def test_report_groups_every_differing_setting_and_counts_duplicates_once(tmp_path, mlflow_uri):
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("grp")
    fake_run("loreft", 0.60, layer=15, rank=4, seed=1, lr=0.004)
    fake_run("loreft", 0.90, layer=15, rank=4, seed=1, lr=0.02)  # another learning rate: not a seed
    fake_run("loreft", 0.70, layer=15, rank=4, seed=1, lr=0.004, data="d2")  # other data: not a seed
    fake_run("loreft", 0.64, layer=15, rank=4, seed=2, lr=0.004)
    # the same seed again: counts once (latest); its data license (logged by newer runs) splits nothing
    fake_run("loreft", 0.66, layer=15, rank=4, seed=2, lr=0.004, budget={"data.license": "CC BY-NC-SA 3.0"})
    result = render.write(load_runs("grp", mlflow_uri), tmp_path / "r", "grp")
    assert result["keys"] == ["trainer.lr", "data"]
    table = result["table"].set_index(["trainer.lr", "data"])
    assert table.loc[("0.004", "d1"), "seeds"] == 2
    assert table.loc[("0.004", "d1"), "accuracy"] == pytest.approx((0.60 + 0.66) / 2)
    assert table.loc[("0.02", "d1"), "seeds"] == 1 and table.loc[("0.004", "d2"), "seeds"] == 1
    assert (tmp_path / "r" / "accuracy_vs_learning_rate.png").exists()
    assert not (tmp_path / "r" / "accuracy_vs_layer.png").exists()


@pytest.mark.slow
def test_reft_vs_lora_preset_is_one_command(tmp_path, mlflow_uri):
    out = train_here(  # `python train.py ...`, here: the preset's sweep runs its jobs in its own process
        "experiment=reft_vs_lora", "model=tiny_random", "model.num_layers=16", "data.max_train=16",
        "data.max_val=16", "data.max_eval=16", "trainer.max_length=64", "trainer.epochs=1",
        "trainer.lr=1e-3,4e-3", "seed=1",
        f"mlflow.tracking_uri={mlflow_uri}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    # none and tfidf do not depend on the learning rate: run once each (the seed too: test_config.py)
    assert "8 jobs: 6 finished, 0 failed, 2 skipped" in out.stderr
    table = runs(mlflow_uri, "reft_vs_lora")
    assert sorted(table["tags.method"]) == ["lora"] * 2 + ["loreft"] * 2 + ["none", "tfidf"]
    result = render.write(load_runs("reft_vs_lora", mlflow_uri), tmp_path / "r", "r")
    table = result["table"]
    chosen = result["chosen"]["per_method"]
    for method in ("loreft", "lora"):  # each method's learning rate is its best on validation
        rows = table[table["method"] == method]
        assert table.loc[chosen[method], "val_accuracy"] == rows["val_accuracy"].max()
    text = (tmp_path / "r" / "report.md").read_text()
    for method in ("loreft", "lora"):  # each method's best is marked; the overall choice as chosen
        if chosen[method] != result["chosen"]["overall"]:
            assert f"best {method_name(method)} (validation)" in text
    assert "**chosen** (best validation)" in text
    for method in ("none", "tfidf"):  # no learning rate: shown as "-", not the grid's first value
        assert table.loc[table["method"] == method, "trainer.lr"].tolist() == ["-"]


def test_the_folds_of_a_configuration_pool_as_replicates_on_their_corpus():
    from reftlab.report import runs as report_runs
    from reftlab.report.stats import summarise

    rows = []
    for rank, acc in (("1", 0.70), ("4", 0.80)):
        for seed in ("1", "2"):
            for fold in ("0", "1", "2"):
                rows.append({"run_id": f"{rank}{seed}{fold}", "status": "FINISHED", "tags.method": "loreft",
                             "params.intervention.rank": rank, "params.seed": seed, "params.data.folds": "3",
                             "params.data.fold": fold, "tags.data_hash": f"rows-of-fold-{fold}",
                             "tags.data_corpus_hash": "corpus", "metrics.accuracy": acc, "metrics.val_accuracy": acc,
                             "metrics.train_loss_last": 0.1, "metrics.trainable_params": 10})  # fmt: skip
    tidy = report_runs.tidy(pd.DataFrame(rows))
    keys = report_runs.varying(tidy)
    assert keys == ["intervention.rank"]  # neither the fold nor each fold's rows split a group
    kept = report_runs.dedupe(tidy, keys)
    assert len(kept) == 12  # seed x fold replicates, none collapsed
    table = summarise(kept, keys)
    assert table["seeds"].tolist() == [6, 6] and table["accuracy"].tolist() == pytest.approx([0.70, 0.80])
    plain = report_runs.tidy(pd.DataFrame(rows).drop(columns=["params.data.folds"]))
    assert "data" in report_runs.varying(plain)  # without folds, other rows are other data


def test_the_paired_test_calls_a_planted_difference_significant_and_an_identical_pair_not():
    import numpy as np

    from reftlab.report.stats import holm, paired_bootstrap

    rng = np.random.default_rng(0)
    base = [rng.random(320) < 0.80 for _ in range(3)]  # 3 replicates, 320 test reviews each
    better = [b | (rng.random(320) < 0.25) for b in base]  # right wherever base is, and on ~5 points more
    diff, low, high, p = paired_bootstrap(list(zip(better, base, strict=True)))
    assert 0.03 < diff < 0.08 and 0 < low < diff < high and p < 0.01
    same = paired_bootstrap(list(zip(base, base, strict=True)))
    assert same == (0.0, 0.0, 0.0, 1.0)
    noise = [rng.random(320) < 0.80 for _ in range(3)]  # another run as good: no difference to find
    assert paired_bootstrap(list(zip(noise, base, strict=True)))[3] > 0.05
    assert holm([0.01, 0.04, float("nan"), 0.03]) == pytest.approx(
        [0.03, 0.06, float("nan"), 0.06], nan_ok=True
    )


def test_groups_pair_with_the_reference_by_seed_and_fold_on_the_same_reviews(tmp_path):
    import numpy as np

    from reftlab.report.plots import differences
    from reftlab.report.tables import against_reference

    texts = [f"review {i}" for i in range(200)]
    rng = np.random.default_rng(1)
    truth = {}

    def runs_of(name, accuracy):
        rows = []
        for seed in ("1", "2"):
            for fold in ("0", "1"):
                run_id = f"{name}-{seed}-{fold}"
                truth[run_id] = pd.Series((rng.random(200) < accuracy).astype(int), index=texts)
                rows.append({"run_id": run_id, "seed": seed, "fold": fold, "accuracy": truth[run_id].mean()})
        return pd.DataFrame(rows)

    table = pd.DataFrame({"_runs": [runs_of("ref", 0.70), runs_of("good", 0.90), runs_of("twin", 0.70)]})
    found = against_reference(table, 0, correct=truth.get)
    good, twin = found[1], found[2]
    assert good[4] == twin[4] == "paired"
    assert 0.15 < good[0] < 0.25 and good[1] > 0 and good[3] < 0.05  # significant after Holm
    assert twin[1] < 0 < twin[2] and twin[3] > 0.05
    no_predictions = against_reference(table, 0, correct=lambda run_id: None)
    assert no_predictions[1][4] == "welch" and np.isnan(no_predictions[1][1])
    # the plot reads the same: the planted difference filled and right of 0, the twin open across 0
    table["intervention.rank"] = [4, 16, 32]
    drawn = differences(table, ["intervention.rank"], found, 0, tmp_path / "d.png")
    assert [d[0] for d in drawn] == ["rank=16", "rank=32"] and (tmp_path / "d.png").stat().st_size > 5000
    assert drawn[0][4] and drawn[0][2] > 0 and not drawn[1][4] and drawn[1][2] < 0 < drawn[1][3]
    assert drawn[0][1] == pytest.approx(100 * good[0])


def test_whole_number_settings_are_ticked_as_the_integers_run_even_on_a_log_axis():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reftlab.report.plots import integer_ticks

    fig, ax = plt.subplots()
    ax.plot([1, 4, 16, 32], [0.8, 0.82, 0.85, 0.84])
    ax.set_xscale("log")
    integer_ticks(ax, [32.0, 1.0, 16.0, 4.0])
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "4", "16", "32"]
    assert len(ax.xaxis.get_minorticklocs()) == 0
    ax2 = plt.subplots()[1]
    integer_ticks(ax2, [0.001, 0.004])  # a learning rate keeps matplotlib's own ticks
    assert [t.get_text() for t in ax2.get_xticklabels()] != ["0", "0"]
    plt.close("all")


# --- the paired comparison pairs every replicate (issue #30, item 2) -----------------------------


def replicates(name: str, seeds: dict, folds=("0", "1"), n: int = 200, truth: dict | None = None):
    """The runs of one group: per seed (its accuracy) and fold, a run right on exactly that share of
    the fold's `n` test reviews (which ones: at random); their correctness lands in `truth`."""
    import numpy as np

    rng = np.random.default_rng(len(truth))
    rows = []
    for seed, accuracy in seeds.items():
        for fold in folds:
            run_id = f"{name}-{seed}-{fold}"
            right = np.zeros(n, int)
            right[rng.permutation(n)[: round(accuracy * n)]] = 1
            truth[run_id] = pd.Series(right, index=[f"fold {fold} review {i}" for i in range(n)])
            rows.append({"run_id": run_id, "seed": seed, "fold": fold, "accuracy": accuracy})
    return pd.DataFrame(rows)


def test_a_seeded_group_pairs_every_seed_with_a_seedless_references_run_of_the_same_fold():
    """LoReFT seeds at 60/70/95% against TF-IDF at 80% (its one run a fold, logged under the
    config's seed 42) differ by -5 points, not by the last seed's +15; and the other way round."""
    from reftlab.report.tables import against_reference, display

    truth = {}
    loreft = replicates("loreft", {"1": 0.60, "2": 0.70, "3": 0.95}, truth=truth)
    tfidf = replicates("tfidf", {"42": 0.80}, truth=truth)
    table = pd.DataFrame({"method": ["tfidf", "loreft"], "_runs": [tfidf, loreft]})
    diff, low, high, p, how, paired_on = against_reference(table, 0, correct=truth.get)[1]
    assert how == "paired" and diff == pytest.approx(-0.05) and low < diff < high
    assert paired_on == "3 seeds × 2 folds vs 1 run a fold"
    assert against_reference(table, 1, correct=truth.get)[0][0] == pytest.approx(+0.05)  # seedless group
    table = table.assign(seeds=[2, 6], val_accuracy=0.8, accuracy=0.8, ci95=float("nan"), ci_low=0.7, ci_high=0.9,
                         ci_how="bootstrap", f1=0.8, trainable_params=0, trainable_percent=0.0, train_seconds=1.0,
                         cache_seconds=0.0)  # fmt: skip
    shown = display(table, ["method"], {"overall": None, "per_method": {}}, 0,
                    against_reference(table, 0, correct=truth.get))  # fmt: skip
    assert shown.loc[1, "paired on"] == "3 seeds × 2 folds vs 1 run a fold"


def test_seeded_groups_pair_by_seed_when_both_ran_the_same_seeds_and_every_pairing_when_not():
    from reftlab.report.tables import against_reference

    truth = {}
    loreft = replicates("loreft", {"1": 0.60, "2": 0.70, "3": 0.95}, truth=truth)
    same_seeds = replicates("lora", {"1": 0.80, "2": 0.80, "3": 0.80}, truth=truth)
    other_seeds = replicates("lora-b", {"4": 0.75, "5": 0.85}, truth=truth)
    table = pd.DataFrame({"_runs": [loreft, same_seeds, other_seeds]})
    found = against_reference(table, 0, correct=truth.get)
    assert (
        found[1][0] == pytest.approx(+0.05) and found[1][5] == "3 seeds × 2 folds vs 3 seeds a fold, by seed"
    )
    assert found[2][0] == pytest.approx(+0.05) and found[2][5] == "2 seeds × 2 folds vs 3 seeds a fold"
    seedless = pd.DataFrame({"_runs": [replicates("none", {"42": 0.5}, truth=truth), table.loc[0, "_runs"]]})
    truth_tfidf = replicates("tfidf", {"7": 0.80}, folds=("0", "1"), truth=truth)
    both = pd.DataFrame({"_runs": [seedless.loc[0, "_runs"], truth_tfidf]})
    assert against_reference(both, 0, correct=truth.get)[1][0] == pytest.approx(0.30)  # by fold


def test_seeds_scored_on_the_same_reviews_share_each_bootstrap_draw_of_them():
    """Three seeds that answer every review alike are no more evidence than one: the reviews of a
    fold are drawn once for all of its pairs, so the interval is the one seed's, not narrower."""
    from reftlab.report.tables import against_reference

    truth = {}
    one = replicates("one", {"1": 0.75}, truth=truth)
    ref = replicates("ref", {"1": 0.70}, truth=truth)
    three = pd.concat([one.assign(seed=s, run_id=one["run_id"] + s) for s in "123"], ignore_index=True)
    ref3 = pd.concat([ref.assign(seed=s, run_id=ref["run_id"] + s) for s in "123"], ignore_index=True)
    for run_id, seed_run in zip(three["run_id"], list(one["run_id"]) * 3, strict=True):
        truth[run_id] = truth[seed_run]
    for run_id, seed_run in zip(ref3["run_id"], list(ref["run_id"]) * 3, strict=True):
        truth[run_id] = truth[seed_run]
    single = against_reference(pd.DataFrame({"_runs": [ref, one]}), 0, correct=truth.get)[1]
    tripled = against_reference(pd.DataFrame({"_runs": [ref3, three]}), 0, correct=truth.get)[1]
    assert tripled[:3] == pytest.approx(single[:3])


# --- --reference says what it matched, or exits 2 naming the groups (issue #30, item 11) ---------


def mlflow_frame(*groups) -> pd.DataFrame:
    """MLflow's search_runs frame of finished runs: per group (method, rank, {seed: accuracy}), its runs
    at layer 15 on the same 320 test reviews (the confusion counts say how many were right)."""
    rows = []
    for method, rank, seeds in groups:
        for seed, accuracy in seeds.items():
            right, n = round(accuracy * 320), 320
            rows.append({"run_id": f"{method}-{rank}-{seed}", "status": "FINISHED", "tags.method": method,
                         "tags.data_hash": "d1", "params.intervention.method": method,
                         "params.intervention.rank": rank, "params.intervention.layer": "15", "params.seed": seed,
                         "metrics.accuracy": right / n, "metrics.val_accuracy": right / n, "metrics.f1": 0.5,
                         "metrics.train_loss_last": 0.1, "metrics.trainable_params": 10,
                         "metrics.tp": right // 2, "metrics.fn": n // 2 - right // 2,
                         "metrics.tn": right - right // 2, "metrics.fp": n // 2 - (right - right // 2),
                         "start_time": pd.Timestamp("2026-01-01")})  # fmt: skip
    return pd.DataFrame(rows)


RANKS = (("loreft", "1", {"1": 0.70, "2": 0.72, "3": 0.74}), ("loreft", "4", {"1": 0.80, "2": 0.82, "3": 0.84}),
         ("tfidf", "None", {"42": 0.85}))  # fmt: skip


def report_of(frame: pd.DataFrame, monkeypatch, tmp_path, capsys, *reference: str):
    """`python report.py --reference ...` over `frame` (no MLflow store: its runs given, none logged):
    (exit code, stdout, stderr, the report's Markdown or None)."""
    from reftlab.report import runs as report_runs

    monkeypatch.setattr(cli, "load_runs", lambda *a: frame)
    monkeypatch.setattr(cli, "baseline_runs", lambda *a: pd.DataFrame())
    monkeypatch.setattr(
        report_runs, "_CORRECT", {run_id: None for run_id in frame["run_id"]}
    )  # no predictions
    out = tmp_path / "r"
    code = cli.main(["--no-mlflow", "--out", str(out), "--reference", *reference])
    printed = capsys.readouterr()
    md = (out / "report.md").read_text() if (out / "report.md").exists() else None
    return code, printed.out, printed.err, md


@pytest.mark.parametrize(
    "reference, problem",
    [
        (["intervention.rank=99"], "intervention.rank=99 matches no group"),
        (["rnk=1"], "no setting named 'rnk'"),
        (["method=loreft"], "method=loreft matches 2 groups"),
        (["rank=4", "intervention.layer=8"], "matches no group"),  # a setting all runs share, another value
        (["rank"], "use key=value"),
    ],
)
def test_a_reference_that_matches_no_single_group_exits_2_naming_the_groups(
    reference, problem, monkeypatch, tmp_path, capsys
):
    code, _, err, md = report_of(mlflow_frame(*RANKS), monkeypatch, tmp_path, capsys, *reference)
    assert code == 2 and problem in err and md is None
    if problem != "use key=value":  # the groups there are, by the settings that tell them apart
        assert "method=loreft, rank=1" in err and "method=loreft, rank=4" in err and "method=tfidf" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "reference, row",
    [
        (["rank=1.0"], 0),
        (["intervention.rank=4", "method=loreft"], 1),
        (["method=tfidf"], 2),
        (["method=TF-IDF"], 2),
        (["rank=4", "intervention.layer=15"], 1),
    ],  # fmt: skip
)
def test_a_reference_as_people_type_it_is_found_and_the_report_says_which(
    reference, row, monkeypatch, tmp_path, capsys
):
    code, out, _, md = report_of(mlflow_frame(*RANKS), monkeypatch, tmp_path, capsys, *reference)
    assert code == 0
    table = [line for line in md.splitlines() if line.startswith("| ")][1:]
    assert ["reference" in line for line in table] == [i == row for i in range(3)]
    named = ("method=LoReFT, rank=1", "method=LoReFT, rank=4", "method=TF-IDF")[row]
    assert f"reference: {named}" in out and f"reference group is {named}" in md
    if "intervention.layer=15" in reference:  # a setting that tells no groups apart is said, not dropped
        assert "intervention.layer=15: not among the settings that tell the groups apart" in out


# --- an interval for an accuracy stays in [0, 100] (issue #30, item 16) ---------------------------


def test_fewer_than_3_replicates_show_the_bootstrap_interval_over_the_reviews_marked(tmp_path):
    """2 seeds at 50% and 68.75%: Student t with one degree of freedom says 59.4% ± 119.1; the
    report shows the interval over the 2 x 320 test reviews instead, inside [0, 100], marked †."""
    from reftlab.report.plots import error_bars

    frame = mlflow_frame(
        ("loreft", "1", {"1": 0.50, "2": 0.6875}), ("loreft", "4", {"1": 0.5, "2": 0.9, "3": 0.99})
    )
    found = render.analyse(frame, "t", None, {"intervention.rank": "1"}, correct=lambda run_id: None)
    two, three = found.table.loc[0], found.table.loc[1]
    # each run's 320 reviews resampled: about ± 1.96 * sqrt(.5 * .5 / 320 + .6875 * .3125 / 320) / 2 = 3.7 points
    assert two["ci_how"] == "bootstrap" and 0.555 < two["ci_low"] < 0.56 and 0.63 < two["ci_high"] < 0.635
    assert three["ci_how"] == "t" and three["ci_high"] == 1.0 and 0 < three["ci_low"]  # t, cut at 100%
    shown = tables.display(found.table, found.keys, found.chosen, found.reference, found.compared)
    assert shown["test acc (95% CI)"].tolist()[0] == "59.4% [55.6, 63.1]†"
    assert (
        "119.1" not in shown.to_string() and shown["test acc (95% CI)"].tolist()[1] == "79.7% [14.8, 100.0]"
    )
    assert any("†" in line for line in render.how_to_read(found))
    low, high = error_bars(found.table)
    assert (found.table["accuracy"] - low >= 0).all() and (found.table["accuracy"] + high <= 1).all()


def test_a_groups_bootstrap_interval_draws_a_folds_reviews_once_for_all_of_its_seeds():
    """With predictions, two seeds that answer every review of their fold alike are one seed's
    evidence (not two independent samples of reviews); runs of other folds are other reviews."""
    from reftlab.report.stats import accuracy_interval

    truth = {}
    alike = replicates("a", {"1": 0.7}, folds=("0",), truth=truth)
    truth["a-2-0"] = truth["a-1-0"]
    two_seeds = pd.concat([alike, alike.assign(seed="2", run_id="a-2-0")], ignore_index=True)
    one, two = accuracy_interval(alike, truth.get), accuracy_interval(two_seeds, truth.get)
    assert one == two and one[2] == "bootstrap" and one[0] < 0.7 < one[1]
    two_folds = replicates("b", {"1": 0.7}, truth=truth)  # 2 x 200 reviews: a narrower interval
    low, high, _ = accuracy_interval(two_folds, truth.get)
    assert one[0] < low < 0.7 < high < one[1]


def test_a_loreft_with_other_intervention_settings_is_not_the_default_reference():
    """Groups told apart by their method alone: the LoReFT group is the project's default only where its
    intervention settings are the defaults (experiment=commonsense's rank 8 at f7+l7 is not)."""
    import pandas as pd

    from reftlab.report import stats

    defaults = stats.default_settings()

    def table(rank: str) -> pd.DataFrame:
        runs = [pd.DataFrame([{"method": "loreft", "intervention.rank": rank, "intervention.layer": "15"}]),
                pd.DataFrame([{"method": "none", "intervention.hint": "x"}])]  # fmt: skip
        return pd.DataFrame({"method": ["loreft", "none"], "_runs": runs})

    assert stats.reference_group(table(str(defaults["intervention.rank"])), ["method"], defaults) == 0
    assert stats.reference_group(table("8"), ["method"], defaults) is None


def test_the_html_report_carries_its_plots_inside(tmp_path):
    (tmp_path / "plot.png").write_bytes(b"\x89PNG fake")
    page = render.inline_images("<img src='plot.png' alt='a'><img src='missing.png' alt='b'>", tmp_path)
    assert "<img src='data:image/png;base64,iVBORyBmYWtl' alt='a'>" in page and "src='missing.png'" in page
