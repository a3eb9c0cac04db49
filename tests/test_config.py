"""Every option of every config group composes, and the options mean what they say."""

import subprocess

import pytest
from conftest import CONF, PYTHON, ROOT, compose


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["model", "intervention", "data", "trainer", "mlflow", "experiment"])
def test_every_option_composes(group):
    names = options(group)
    assert names, f"conf/{group} is empty"
    for name in names:
        cfg = compose(f"{group}={name}")
        assert group == "experiment" or cfg[group] is not None


def test_defaults_are_the_embedded_default():
    cfg = compose()
    assert cfg.model.name == "smollm2_135m" and cfg.model.source == "bundled"
    assert cfg.intervention.method == "loreft"
    assert cfg.intervention.component == "block_output"
    assert cfg.intervention.rank == 4 and cfg.intervention.positions == "l3"
    assert cfg.trainer.epochs == 10 and cfg.trainer.max_length == 512
    assert cfg.data.name == "opinion_spam" and cfg.data.split == "stratified"
    assert (ROOT / cfg.data.path).is_file()


def test_reference_model_and_data_settings():
    llama = compose("model=llama3_8b_instruct").model
    assert llama.path == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert llama.source == "hub" and llama.dtype == "bfloat16" and llama.num_layers == 32
    persuasion = compose("data=persuasion").data
    assert persuasion.path.startswith("https://huggingface.co/datasets/Anthropic/persuasion/")
    assert persuasion.split == "argument" and persuasion.eval_fraction == 0.05
    assert persuasion.system_prompt == "Detect whether the following message is being deceptive."
    sample = compose("data=persuasion_sample").data
    assert (ROOT / sample.path).is_file() and sample.recipe == "persuasion"


def test_experiment_preset_overlays_globally():
    cfg = compose("experiment=smoke")
    assert cfg.model.name == "tiny_random"
    assert cfg.data.max_train == 32 and cfg.trainer.epochs == 1


def test_cli_help_and_cfg_are_fast_and_import_no_torch():
    out = subprocess.run(
        [PYTHON, "-X", "importtime", "train.py", "--cfg", "job", "intervention.rank=8"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "rank: 8" in out.stdout
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "transformers" not in imported


ABLATIONS = {
    "ablate_layer": ("intervention.layer", ["3", "9", "15", "21", "27"]),
    "ablate_rank": ("intervention.rank", ["1", "4", "16", "32"]),
    "ablate_positions": ("intervention.positions", ["l1", "l3", "l5", "l9"]),
    "ablate_epochs": ("trainer.epochs", ["1", "3", "5", "10"]),
    "ablate_layers_multi": ("intervention.layer", ["[15]", "[9, 15, 21]", "[3, 9, 15, 21, 27]",
                                                   "[0, 3, 6, 9, 12, 15, 18, 21, 24, 27]"]),
}  # fmt: skip


def sweep_of(preset: str) -> dict[str, list[str]]:
    """The values each swept key takes in a preset, as Hydra's sweeper expands them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from reftlab.config.compose import compose as reftlab_compose

    cfg = reftlab_compose([f"experiment={preset}"], return_hydra_config=True)
    parser = OverridesParser.create()
    params = cfg.hydra.sweeper.params
    return {
        k: [str(v) for v in parser.parse_overrides([f"{k}={params[k]}"])[0].sweep_iterator()] for k in params
    }


@pytest.mark.parametrize("preset", sorted(ABLATIONS))
def test_ablation_presets_vary_one_setting_over_three_seeds_on_the_full_split(preset):
    cfg = compose(f"experiment={preset}")
    key, values = ABLATIONS[preset]
    assert sweep_of(preset) == {key: values, "seed": ["1", "2", "3"]}
    assert cfg.mlflow.experiment == preset
    assert cfg.data.max_train is None and cfg.data.max_eval is None and cfg.data.max_val is None
    assert cfg.data.val_fraction > 0  # the report chooses on validation
    assert cfg.trainer.epochs == 5 and cfg.trainer.max_length == 512 and cfg.intervention.rank == 4


def test_reft_vs_lora_gives_each_method_the_same_learning_rate_grid_and_three_seeds():
    sweep = sweep_of("reft_vs_lora")
    assert sweep["intervention"] == ["loreft", "lora", "none", "tfidf"]
    assert len(sweep["trainer.lr"]) >= 3 and sweep["seed"] == ["1", "2", "3"]


def test_a_method_that_does_not_train_ignores_the_seed_and_the_training_settings():
    """What lets a sweep over seed or trainer.lr run TF-IDF and zero-shot once (resume skips the rest)."""
    from omegaconf import OmegaConf

    from reftlab.config.identity import config_hash

    def key(*overrides, trains):
        return config_hash(OmegaConf.to_container(compose(*overrides), resolve=True), trains=trains)

    for setting in ("seed=2", "trainer.lr=0.5", "intervention.layer=3"):
        assert key(setting, trains=False) == key(trains=False), setting
        assert key(setting, trains=True) != key(trains=True), setting
    assert key("data.eval_fraction=0.3", trains=False) != key(trains=False)  # the data still counts


# How many fused groups each ablation's jobs form under hydra/launcher=fused (reftlab.sweep.fused):
# one prefix cache is shared by any layers, ranks, seeds and epochs, not by other last-token positions.
FUSED_GROUPS = {"ablate_rank": [12], "ablate_layer": [15], "ablate_epochs": [12], "ablate_layers_multi": [12],
                "ablate_positions": [3, 3, 3, 3]}  # fmt: skip


@pytest.mark.parametrize("preset", sorted(FUSED_GROUPS))
def test_each_ablation_preset_forms_the_fused_groups_its_settings_allow(preset):
    import itertools
    from collections import Counter

    from reftlab.sweep.fused import group_key, why_alone

    sweep = sweep_of(preset)
    keys = Counter()
    for values in itertools.product(*sweep.values()):
        cfg = compose(f"experiment={preset}", *(f"{k}={v}" for k, v in zip(sweep, values, strict=True)))
        assert why_alone(cfg) is None, (preset, values, why_alone(cfg))
        keys[group_key(cfg)] += 1
    assert sorted(keys.values()) == FUSED_GROUPS[preset]


def test_a_folds_overlay_runs_any_preset_over_its_folds_in_one_fused_group_a_fold():
    import itertools
    from collections import Counter

    from reftlab.config.compose import compose as reftlab_compose
    from reftlab.sweep.fused import group_key

    cfg = reftlab_compose(["experiment=ablate_rank", "folds=hotel5"], return_hydra_config=True)
    params = dict(cfg.hydra.sweeper.params)
    assert params == {"intervention.rank": "1,4,16,32", "seed": "1,2,3", "data.fold": "0,1,2,3,4"}
    groups = Counter()
    for rank, seed, fold in itertools.product((1, 4, 16, 32), (1, 2, 3), range(5)):
        job = compose("experiment=ablate_rank", "folds=hotel5", f"intervention.rank={rank}", f"seed={seed}",
                      f"data.fold={fold}")  # fmt: skip
        assert (job.data.split, job.data.folds, job.data.fold) == ("hotel", 5, fold)
        groups[group_key(job)] += 1
    assert sorted(groups.values()) == [12] * 5  # 60 jobs: each fold's 12 share one prefix cache
