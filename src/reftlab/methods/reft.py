"""The ReFT family with pyreft: LoReFT, NoReFT, DiReFT, ConsReFT (one intervention per layer and
position slot on the frozen model; see reftlab.reft for building, saving and loading)."""

from __future__ import annotations

from . import LanguageModelMethod, register


@register
class ReftMethod(LanguageModelMethod):
    names = ("loreft", "noreft", "direft", "consreft")
    paths = ("stock", "cached")  # the stored prefix cache is exact for many ReFT settings
    stock_name = "pyreft"

    @property
    def display(self) -> str:
        return {"loreft": "LoReFT", "noreft": "NoReFT", "direft": "DiReFT", "consreft": "ConsReFT"}[self.name]

    def validate(self, icfg, n_layers, model_name) -> None:
        from ..positions import COMPONENTS, parse_positions
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

    def build(self, model, settings):
        from .. import reft

        return reft.build(model, settings)

    def trainable(self, trained):
        from .. import reft

        return reft.trainable_parameters(trained)

    def save(self, trained, settings, folder):
        from .. import reft

        return reft.save(trained, settings, folder)

    def load(self, model, folder):
        from .. import reft

        return reft.load(model, folder)
