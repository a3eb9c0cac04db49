"""The intervention settings, parsed once: layers, positions, component, rank (pure Python, no torch).

Made from the config (or a saved settings dict) and passed to everything that builds, trains,
caches or evaluates an intervention, so position strings and layer lists are read in one place:
pyreft's position strings (`parse_positions`), layer lists (`as_layers`), the components we know
(`COMPONENTS`), and pyvene's unit locations for a batch (`unit_locations`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Components whose representation size we know for Llama-style models (see `component_dim`).
COMPONENTS = (
    "block_output",
    "block_input",
    "mlp_output",
    "mlp_input",
    "mlp_activation",
    "attention_output",
    "attention_input",
    "attention_value_output",
    "query_output",
    "key_output",
    "value_output",
)
POSITIONS_RE = re.compile(r"^(?:f(\d+))?(?:\+?l(\d+))?$")


def parse_positions(positions: str) -> tuple[int, int]:
    """'f1+l1' -> (1, 1); 'l3' -> (0, 3). Raises ValueError naming the valid forms."""
    m = POSITIONS_RE.match(str(positions).strip())
    first, last = (int(g) if g else 0 for g in m.groups()) if m else (0, 0)
    if not m or first + last == 0 or (str(positions).startswith("+")):
        raise ValueError(
            f"intervention.positions={positions!r} is not valid: use pyreft's form f<n>, l<n> or f<n>+l<n> "
            "with n >= 1 (e.g. l1, f1+l1, f3+l3)"
        )
    return first, last


def intervention_slots(layers: list[int], positions: str, share_weights: bool) -> list[tuple[int, str]]:
    """One (layer, which) per intervention; `which` is 'f', 'l' or 'fl' (tied prefix+suffix)."""
    first, last = parse_positions(positions)
    if first and last and not share_weights:
        return [(layer, w) for w in ("f", "l") for layer in layers]
    which = "fl" if first and last else ("f" if first else "l")
    return [(layer, which) for layer in layers]


def as_layers(layer, num_layers: int | None = None) -> list[int]:
    """An int, a list of ints, or "all" (needs num_layers) as a list of layer indices."""
    if layer == "all":
        if num_layers is None:
            raise ValueError("intervention.layer=all needs the model's layer count")
        return list(range(num_layers))
    if isinstance(layer, int | str):
        return [int(layer)]
    return [int(x) for x in layer]


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
