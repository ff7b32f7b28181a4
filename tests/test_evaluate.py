"""zoo evaluate: a checkpoint measured on the data its config.json names, beside what it records."""

import json

import pytest

from zoo.cli import main
from zoo.evaluate import evaluate, recorded_figures


def test_evaluate_a_slice_gives_the_recorded_figure():
    result = evaluate("image_transformer_small.digits", limit=100)
    assert result["kind"] == "image" and result["split"] == "test" and result["first"] == 100
    recorded = result["recorded"]["bpd"]
    assert recorded == 1.6955 and abs(result["metrics"]["bpd"] - recorded) < 0.02


def test_evaluate_command_prints_a_table_or_json(capsys, multi30k):
    main(["evaluate", "ngram.multi30k_en", "--limit", "100"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ngram.multi30k_en (text) on test, first 100")
    assert lines[-1].split()[0] == "ppl" and lines[-1].split()[-1] == "45.56"
    main(["evaluate", "ngram.multi30k_en", "--limit", "100", "--json", "--data-dir", str(multi30k)])
    result = json.loads(capsys.readouterr().out)
    assert result["recorded"] == {"ppl": 45.56} and abs(result["metrics"]["ppl"] - 45.56) < 0.5


def test_recorded_figures_belong_to_the_split_measured():
    config = {"metrics": {"val_nll": 0.39, "test_nll": 0.40}, "reproduce": {"split": "val", "first": 10, "nll": 0.41}}
    assert recorded_figures(config, "test", None) == {"test_nll": 0.40}
    assert recorded_figures(config, "val", None) == {"val_nll": 0.39}
    assert recorded_figures(config, "val", 10) == {"val_nll": 0.41}
    assert recorded_figures(config, "val", 5) == {}
    assert recorded_figures({"metrics": {"bpd": 0.75}}, "val", None) == {}


def test_a_folder_that_does_not_say_its_data_is_refused_in_one_line(tmp_path, tiny_model, capsys):
    tiny_model.save_pretrained(tmp_path / "m")
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", str(tmp_path / "m")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zoo: error: ") and "does not say which data it was measured on" in err and "\n" not in err


@pytest.mark.parametrize("argv, message", [
    (["translate", "music_transformer_small.jsb", "Ein Hund."], "is a music model; zoo translate needs a translation model"),
    (["attention", "ngram.multi30k_en", "A man"], "is a text language model; zoo attention needs a translation model"),
    (["attention", "image_transformer_small.digits", "x"], "is an image model; zoo attention needs a translation model"),
])
def test_a_command_given_a_model_of_the_wrong_kind_says_so_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zoo: error: ") and message in err and "\n" not in err
