"""Where interventions go: pyreft's position strings, layers, and pyvene unit locations.

Pure Python (no torch), so settings can be checked before anything heavy is imported.
"""

from __future__ import annotations

import re

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
