"""The cohort command's plan and its refusals, without a Ray cluster: a bad option or model is a clear message and
exit status 2 before any cluster starts; ids that are not cases are skipped with why."""

from __future__ import annotations

import pytest

from amoslabel.cli.main import main
from amoslabel.config import load_config
from amoslabel.workspace import Workspace
from cohort.plan import plan_cases
from models.networks import build_network
from models.versions import ModelStore


@pytest.fixture(scope="module")
def studies(shared, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort-command")
    for i in range(3):
        (folder / f"case_{i}.nii.gz").symlink_to(shared / "ct" / "ts_abdomen_ct_small.nii.gz")
    config = load_config(overrides={"preset": "cpu-fast"})
    settings = config.active.networks["unet"]
    store = ModelStore(Workspace(folder).models(config.storage.models_dir), "unet")
    store.publish(build_network(settings.network, settings.params).state_dict(), {})
    return folder


@pytest.mark.parametrize(
    "options, message",
    [
        (["--model", "nosuch"], "unknown model 'nosuch'"),
        (["--model", "vnet"], "has no trained version yet"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--model", "unet", "--model", "vnet"], "one --model"),
    ],
)
def test_bad_options_exit_2_with_a_message(studies, capsys, options, message):
    assert main(["cohort", "prelabel", "--studies", str(studies), "--preset", "cpu-fast", *options]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_folder_and_an_untrained_scorer_exit_2(studies, tmp_path, capsys):
    assert main(["cohort", "prelabel", "--studies", str(tmp_path / "nothing")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["cohort", "score", "--studies", str(studies), "--preset", "cpu-fast", "--model", "vnet"]) == 2
    assert "no trained version" in capsys.readouterr().err


def test_ids_that_are_not_cases_are_skipped_with_why_and_nothing_starts(studies, capsys):
    code = main(["cohort", "prelabel", "--studies", str(studies), "--preset", "cpu-fast", "--cases", "../etc,nope"])
    out = capsys.readouterr().out
    assert code == 0 and "0 done, 2 skipped, 0 failed" in out and "skipped 2: not a case of this studies folder" in out


def test_the_plan_skips_done_and_later_states_and_honours_the_limit():
    table = {"a": "new", "b": "prelabelled", "c": "with_junior", "d": "new", "e": "final"}
    plan = plan_cases(table, {"b"}, ("new", "prelabelled"), "done already", limit=1)
    assert plan.todo == ["a"]
    assert plan.skipped == {
        "b": "done already",
        "c": "with junior: past pre-labelling",
        "e": "final: past pre-labelling",
    }
    wanted = plan_cases(table, set(), ("new",), "done", wanted=["d", "zz"])
    assert wanted.todo == ["d"] and wanted.skipped == {"zz": "not a case of this studies folder"}
