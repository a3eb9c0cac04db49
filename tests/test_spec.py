"""pyreft position strings and the unit locations handed to pyvene."""

import pytest

from reftlab.spec import intervention_slots, parse_positions, unit_locations


@pytest.mark.parametrize(
    "text,expected", [("l1", (0, 1)), ("f1+l1", (1, 1)), ("f3+l3", (3, 3)), ("f2", (2, 0))]
)
def test_parse_positions(text, expected):
    assert parse_positions(text) == expected


@pytest.mark.parametrize("bad", ["", "l0", "x1", "last", "f1+", "+l1", "l1+f1", "f-1"])
def test_bad_positions_name_the_valid_forms(bad):
    with pytest.raises(ValueError, match=r"f<n>, l<n> or f<n>\+l<n>"):
        parse_positions(bad)


def test_untied_prefix_and_suffix_get_their_own_interventions():
    assert intervention_slots([4, 8], "f1+l1", share_weights=False) == [
        (4, "f"),
        (8, "f"),
        (4, "l"),
        (8, "l"),
    ]
    assert intervention_slots([4, 8], "f1+l1", share_weights=True) == [(4, "fl"), (8, "fl")]
    assert intervention_slots([4], "l2", share_weights=False) == [(4, "l")]


def test_unit_locations_follow_left_padding():
    settings = {"layer": 3, "positions": "f1+l2", "share_weights": False}
    # Two prompts of length 5 and 3, left-padded to 5: starts 0 and 2.
    _, locations = unit_locations(settings, prompt_lens=[5, 3], starts=[0, 2])["sources->base"]
    first, last = locations
    assert first == [[0], [2]]
    assert last == [[3, 4], [3, 4]]
    # During training the answer follows the prompt: positions stay on the prompt.
    _, (only,) = unit_locations({"layer": 3, "positions": "l1"}, prompt_lens=[5, 3], starts=[1, 3])[
        "sources->base"
    ]
    assert only == [[5], [5]]


def test_components_exist_in_pyvene_llama_mapping():
    from pyvene.models.llama.modelings_intervenable_llama import llama_type_to_module_mapping

    from reftlab.spec import COMPONENTS

    assert set(COMPONENTS) <= set(llama_type_to_module_mapping)
