"""The intervention settings, parsed once: layers, positions, component, rank (pure Python, no torch).

Made from the config (or a saved settings dict) and passed to everything that builds, trains,
caches or evaluates an intervention, so position strings and layer lists are read in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from .positions import as_layers, intervention_slots, parse_positions


@dataclass(frozen=True)
class InterventionSpec:
    method: str
    layers: tuple[int, ...]
    component: str = "block_output"
    rank: int = 4
    positions: str = "l1"  # pyreft's form, kept for saving and messages
    first: int = 0  # f<n>: intervened first prompt tokens
    last: int = 1  # l<n>: intervened last prompt tokens
    share_weights: bool = False
    dropout: float = 0.0
    num_layers: int | None = None

    @classmethod
    def of(cls, settings, num_layers: int | None = None) -> InterventionSpec:
        """A spec from itself, a settings dict (`reft_settings.json`) or an `intervention` config."""
        if isinstance(settings, cls):
            return settings
        get = settings.get
        n = num_layers if num_layers is not None else get("num_layers")
        positions = str(get("positions", "l1"))
        first, last = parse_positions(positions)
        layer = get("layer")
        layers = () if layer is None else tuple(as_layers(layer, n))
        return cls(
            method=str(get("method", "loreft")),
            layers=layers,
            component=str(get("component", "block_output")),
            rank=int(get("rank", 4)),
            positions=positions,
            first=first,
            last=last,
            share_weights=bool(get("share_weights", False)),
            dropout=float(get("dropout", 0.0) or 0.0),
            num_layers=n,
        )

    @property
    def slots(self) -> list[tuple[int, str]]:
        """One (layer, which) per intervention; `which` is 'f', 'l' or 'fl' (tied prefix+suffix)."""
        return intervention_slots(list(self.layers), self.positions, self.share_weights)


def unit_locations(spec, prompt_lens: list[int], starts: list[int]) -> dict:
    """pyvene's unit_locations for a left-padded batch (`spec`: an InterventionSpec or settings).

    `starts[i]` is the index of example i's first prompt token, `prompt_lens[i]` its prompt length;
    answer tokens (during training) follow the prompt and are never intervened on.
    """
    spec = InterventionSpec.of(spec)
    first, last = spec.first, spec.last
    slots = spec.slots
    per_which = {}
    for which in {w for _, w in slots}:
        rows = []
        for start, n in zip(starts, prompt_lens, strict=True):
            f = [start + k for k in range(min(first, n))] if "f" in which else []
            l_ = [start + n - last + k for k in range(last) if n - last + k >= 0] if "l" in which else []
            rows.append(f + l_)
        per_which[which] = rows
    return {"sources->base": (None, [per_which[w] for _, w in slots])}
