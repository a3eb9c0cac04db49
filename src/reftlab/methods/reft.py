"""The ReFT family with pyreft: LoReFT, NoReFT, DiReFT, ConsReFT (one intervention per layer and
position slot on the frozen model; `reftlab.reft` builds, saves and loads them)."""

from __future__ import annotations

from . import LanguageModelMethod, register


@register
class ReftMethod(LanguageModelMethod):
    names = ("loreft", "noreft", "direft", "consreft")
    # every strategy: the frozen model is unchanged below the interventions (engine.plan says where each is exact)
    paths = ("stock", "cached", "streamed", "residual")
    # its interventions act on prompt positions only (f<n>, l<n>): a prompt's intervened pass leaves
    # the keys/values each continuation runs on from, through the frozen model (`prompt_states`)
    continues_from_keys = True

    @property
    def display(self) -> str:
        return {"loreft": "LoReFT", "noreft": "NoReFT", "direft": "DiReFT", "consreft": "ConsReFT"}[self.name]

    def validate(self, icfg, n_layers, model_name) -> None:
        from ..spec import COMPONENTS, parse_positions
        from ..validate import ConfigError, check_layers, check_rank_dropout

        check_layers(icfg.layer, n_layers, model_name)
        check_rank_dropout(icfg)
        if icfg.component not in COMPONENTS:
            raise ConfigError(
                f"intervention.component={icfg.component!r} is not valid: choose one of {', '.join(COMPONENTS)}"
            )
        try:
            parse_positions(icfg.positions)
        except ValueError as e:
            raise ConfigError(str(e)) from e

    def check_model(self, cfg, model) -> None:
        from .. import reft
        from ..validate import ConfigError

        dim = reft.component_dim(model.config, cfg.intervention.component)
        if cfg.intervention.rank > dim:
            raise ConfigError(
                f"intervention.rank={cfg.intervention.rank} is larger than the {cfg.intervention.component} "
                f"size of {cfg.model.name!r}: valid ranks are 1..{dim}"
            )

    def build(self, model, settings, spec=None):
        from .. import reft

        return reft.build(model, spec or settings)

    def save(self, trained, settings, folder):
        from .. import reft

        return reft.save(trained, settings, folder)

    def load(self, model, folder):
        from .. import reft

        return reft.load(model, folder)

    # what the engine asks: the interventions train, the frozen model sits under them
    def trainable(self, trained):
        from .. import reft

        return reft.trainable_parameters(trained)

    def frozen(self, trained):
        return trained.model

    def interventions(self, trained):
        from .. import reft

        return reft.interventions(trained)

    def logits(self, trained, spec, enc, prompt_lens, k):
        """Through pyreft: the interventions act on the prompt positions pyvene's unit locations name."""
        from ..spec import unit_locations

        base = {key: value for key, value in enc.items() if key != "starts"}
        _, out = trained(
            {**base, "logits_to_keep": k}, unit_locations=unit_locations(spec, prompt_lens, enc["starts"])
        )
        return out.logits

    def prompt_states(self, trained, spec, enc, prompt_lens, kv_cache, cache_arg):
        """Through pyreft, as `logits`: the prompts' pass with the interventions at their positions,
        its keys/values kept in `kv_cache`."""
        from .. import hf_compat
        from ..spec import unit_locations

        base = {key: value for key, value in enc.items() if key != "starts"}
        # the body's final norm's output is its last_hidden_state (generation continues from it)
        with hf_compat.outputs_of(trained.model.model.norm) as captured:
            trained({**base, "use_cache": True, cache_arg: kv_cache, "logits_to_keep": 1},
                    unit_locations=unit_locations(spec, prompt_lens, enc["starts"]))  # fmt: skip
        return captured[-1][:, -1:]

    def train_mode(self, trained, on):
        trained.model.eval()
        for iv in self.interventions(trained):
            iv.train(on)
