"""Undoing what a refused or interrupted run created, and no more."""

from effscale.files import first_new_folder, remove_created


def test_a_refused_run_removes_its_folder_but_not_a_new_parent_another_command_wrote_into(tmp_path):
    own = tmp_path / "results" / "finetune-x"
    new = first_new_folder(own)
    own.mkdir(parents=True)
    (own / "model.pt.tmp").write_text("this run's")
    (tmp_path / "results" / "quick").mkdir()  # a search started meanwhile
    (tmp_path / "results" / "quick" / "trials.csv").write_text("a finished trial")
    remove_created(new, own)
    assert not own.exists() and (tmp_path / "results" / "quick" / "trials.csv").read_text() == "a finished trial"


def test_folders_the_run_made_go_when_nobody_else_wrote_into_them_and_older_ones_stay(tmp_path):
    own = tmp_path / "a" / "b" / "c"
    new = first_new_folder(own)
    own.mkdir(parents=True)
    remove_created(new, own)
    assert not (tmp_path / "a").exists()
    own.mkdir(parents=True)
    remove_created(first_new_folder(own), own)  # it was there already: nothing of it is removed
    assert own.is_dir()
