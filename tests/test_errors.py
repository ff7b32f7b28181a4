"""Bad input to translate gets one clear line; over-long input is truncated with a warning."""

import logging

import pytest


def test_empty_list(tiny_model):
    with pytest.raises(ValueError, match="nothing to translate: the list of sentences is empty"):
        tiny_model.translate([])


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_empty_or_non_string_sentence(tiny_model, bad):
    with pytest.raises(ValueError, match="sentence 1 is empty or not a string"):
        tiny_model.translate(["Ein Mann.", bad])


def test_a_bare_string_instead_of_a_list(tiny_model):
    with pytest.raises(TypeError, match="wrap a single sentence in a list"):
        tiny_model.translate("Ein Mann fährt Fahrrad.")


def test_input_longer_than_the_model_is_truncated_with_a_warning(tiny_model, caplog):
    long = " ".join(["Ein Mann fährt Fahrrad."] * 60)  # far more than transformer_tiny's 128 positions
    with caplog.at_level(logging.WARNING):
        out = tiny_model.translate([long, "Ein Hund."], beam_size=2, max_len=12)
    assert len(out) == 2
    assert "sentence 0 has" in caplog.text and "truncated to the model's maximum of 127" in caplog.text


def test_max_len_beyond_positions_is_capped(tiny_model):
    assert len(tiny_model.translate(["Ein Hund."], beam_size=1, max_len=10_000)) == 1


def test_model_without_tokenizer(tiny_model):
    tiny_model.tokenizers = None
    with pytest.raises(RuntimeError, match="no tokenizer attached; load it with zoo.load"):
        tiny_model.translate(["Ein Hund."])
