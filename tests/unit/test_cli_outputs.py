"""Newcomer items of issue 29: output paths checked before any work, one clear line for a folder
that is not there (score did a FileNotFoundError traceback; report made the folders, even at the
filesystem root), and --help that describes every option."""

from __future__ import annotations

import pytest
from latentwatch.pipeline.cli.main import build_parser, main


@pytest.mark.parametrize("argv", [
    ["score", "--model", "M", "--data", "D.csv", "--out", "/nonexistent/dir/o.csv"],
    ["score", "--model", "M", "--data", "D.csv", "--out", "-", "--episodes", "/nonexistent/dir/e.csv"],
    ["report", "--model", "M", "--data", "D.csv", "--out", "/nonexistent/r.html"],
    ["report", "--model", "M", "--data", "D.csv", "--out", "{tmp}/r.html", "--png", "/nonexistent/p"],
])
def test_an_output_in_a_folder_that_is_not_there_is_one_clear_line_and_nothing_is_made(argv, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("latentwatch: error: ") and "\n" not in err and "Traceback" not in err
    assert "does not exist" in err and "/nonexistent" in err
    assert not list(tmp_path.iterdir())


def test_an_output_that_is_a_folder_is_refused(tmp_path, capsys):
    assert main(["score", "--model", "M", "--data", "D.csv", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_every_option_of_score_and_train_has_a_description():
    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("score", "train", "report"):
        undocumented = [a.option_strings for a in subs[name]._actions if a.option_strings and not a.help]
        assert undocumented == [], name
    bootstrap = next(a for a in subs["train"]._actions if "--bootstrap" in a.option_strings)
    assert "LATENTWATCH_BOOTSTRAP " in bootstrap.help + " " and "LATENTWATCH_KAFKA__BOOTSTRAP_SERVERS" in bootstrap.help
