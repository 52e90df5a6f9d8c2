"""`effscale report` on small hand-made results tables: the numbers, the files, and partial tables."""

import errno
import itertools
import math
import os
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, run_cli
from effscale.errors import UserError
from effscale.report import (PLOTS, compound_margin, margin_sentences, mean_ci, paper_comparison, search_table,
                             strategy_summary, t_critical, write_report)

PNG = b"\x89PNG\r\n\x1a\n"

# val_acc per (strategy, φ) over seeds 0, 1, 2.
ACCURACIES = {
    ("compound", 0): [0.70, 0.71, 0.72],
    ("compound", 1): [0.80, 0.82, 0.84],
    ("width", 1): [0.79, 0.80, 0.81],
    ("depth", 1): [0.78, 0.78, 0.78],
    ("resolution", 1): [0.75, 0.76, 0.77],
    ("compound", 2): [0.90, 0.91, 0.92],
    ("width", 2): [0.80, 0.81, 0.82],
    ("depth", 2): [0.85, 0.85, 0.85],
    ("resolution", 2): [0.83, 0.84, 0.85],
}


def row(trial, strategy, phi, seed, val_acc, alpha=1.2, beta=1.1, gamma=1.15, state="COMPLETE"):
    return dict(trial=trial, strategy=strategy, phi=phi, alpha=alpha, beta=beta, gamma=gamma, depth_mult=1.0,
                width_mult=1.0, resolution=32, params=1e6 * 2**phi, macs=1e7 * 2**phi, macs_ratio=2.0**phi,
                peak_mem_mb=50.0 * 2**phi, feasible=state != "INFEASIBLE", state=state, val_acc=val_acc, seed=seed,
                epochs=1, train_seconds=3.0 * 2**phi)


def compare_table() -> pd.DataFrame:
    rows = [(s, phi, seed, acc) for (s, phi), accs in ACCURACIES.items() for seed, acc in enumerate(accs)]
    return pd.DataFrame([row(trial, *r) for trial, r in enumerate(rows)])


def search_table_rows() -> pd.DataFrame:
    rows = []
    for i, (alpha, beta) in enumerate(itertools.product([1.0, 1.2, 1.4], [1.0, 1.1])):
        gamma = round(math.sqrt(2 / (alpha * beta**2)), 4)
        over = alpha == 1.4 and beta == 1.1
        rows.append(row(i, "compound", 1, 0, None if over else 0.70 + 0.01 * i, alpha, beta, gamma,
                        "INFEASIBLE" if over else "COMPLETE"))
    return pd.DataFrame(rows)


def write(tmp_path, df):
    df.to_csv(tmp_path / "trials.csv", index=False)
    return tmp_path


def files_in(folder):
    """Every file under `folder`, hidden ones included, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_t_interval_matches_the_t_table():
    assert round(t_critical(2), 3) == 4.303 and round(t_critical(30), 3) == 2.042
    assert round(t_critical(60), 3) == 2.000 and round(t_critical(120), 3) == 1.980
    assert 3.182 < t_critical(2.94) < 4.303  # Welch's degrees of freedom are fractional
    assert math.isnan(t_critical(0))
    mean, half, n = mean_ci([0.80, 0.82, 0.84])
    assert (mean, n) == (pytest.approx(0.82), 3) and half == pytest.approx(4.3027 * 0.02 / math.sqrt(3), rel=1e-4)
    assert math.isnan(mean_ci([0.5])[1])


def test_summary_is_mean_and_95_percent_interval_per_strategy_and_phi():
    summary = strategy_summary(compare_table())
    assert list(zip(summary["strategy"], summary["phi"]))[:3] == [("baseline", 0), ("compound", 1), ("compound", 2)]
    compound1 = summary[(summary["strategy"] == "compound") & (summary["phi"] == 1)].iloc[0]
    assert compound1["n"] == 3 and round(compound1["mean"] * 100, 2) == 82.00
    assert round(compound1["ci95"] * 100, 2) == 4.97  # 4.303 · 2.00 / √3
    depth2 = summary[(summary["strategy"] == "depth") & (summary["phi"] == 2)].iloc[0]
    assert depth2["ci95"] == pytest.approx(0.0)


def test_summary_shows_how_far_each_model_missed_the_compound_macs():
    df = compare_table()
    df.loc[(df["strategy"] == "depth") & (df["phi"] == 2), "macs"] *= 1.08
    summary = strategy_summary(df).set_index(["strategy", "phi"])
    assert summary.loc[("depth", 2), "macs_vs_compound"] == pytest.approx(0.08)
    assert summary.loc[("width", 2), "macs_vs_compound"] == pytest.approx(0.0)


def test_margin_is_within_noise_when_the_interval_of_the_difference_includes_zero():
    margin = compound_margin(strategy_summary(compare_table())).set_index("phi")
    # φ = 1: compound 82 (std 2, 3 seeds) vs width 80 (std 1): Welch's dof 2.94, t 3.219,
    # ± 3.219·√(4/3 + 1/3) = ± 4.16 points around +2.
    assert margin.loc[1, "best_single"] == "width" and round(margin.loc[1, "margin"] * 100, 2) == 2.00
    assert round(margin.loc[1, "margin_ci95"] * 100, 2) == 4.16 and margin.loc[1, "verdict"] == "within noise"
    # φ = 2: compound 91 (std 1) vs depth 85 (std 0): ± 4.303·√(1/3) = ± 2.48 around +6.
    assert margin.loc[2, "best_single"] == "depth" and round(margin.loc[2, "margin"] * 100, 2) == 6.00
    assert round(margin.loc[2, "margin_ci95"] * 100, 2) == 2.48 and margin.loc[2, "verdict"] == "compound ahead"


def test_margin_sentence_says_when_the_best_single_dimension_missed_compounds_macs():
    df = compare_table()
    df.loc[(df["strategy"] == "depth") & (df["phi"] == 2), "macs"] *= 0.9
    text = margin_sentences(compound_margin(strategy_summary(df)))
    assert ("At φ = 2 compound is 6.00 points ahead of depth (whose model has 10.0 % fewer MACs), ± 2.48 points"
            in text)
    assert "At φ = 1 compound is 2.00 points ahead of width, ± 4.16 points" in text  # width hit compound's MACs


def test_beside_the_paper_is_table_7_with_our_multipliers_at_the_phi_nearest_its_flops():
    df = compare_table()
    df.loc[(df["strategy"] == "compound") & (df["phi"] == 0), "strategy"] = "baseline"
    df.loc[(df["strategy"] == "resolution") & (df["phi"] == 2), "resolution"] = 64
    df.loc[(df["strategy"] == "width") & (df["phi"] == 2), "width_mult"] = 2.0
    paper = paper_comparison(strategy_summary(df)).set_index("strategy")
    assert list(paper["paper_gflops"]) == [0.4, 1.8, 1.8, 1.9, 1.8] and paper.loc["compound", "paper_top1"] == 81.1
    assert set(paper["phi"]) == {0, 2}  # MACs ratio 4 is nearer the paper's 1.8 / 0.4 than 2 is
    assert paper.loc["resolution", "resolution_mult"] == 2.0 and paper.loc["width", "width_mult"] == 2.0
    assert paper.loc["compound", "mean"] == pytest.approx(0.91)


def test_welch_interval_separates_means_whose_own_intervals_overlap():
    from effscale.report import welch_half_width

    # Two means 3.0 apart, each ± 2.0 (t 2.262 · s/√10, s = 2.80): their intervals overlap, yet the
    # difference's interval, ± 2.63 (dof 18), excludes zero.
    s = 2.0 * math.sqrt(10) / 2.262
    assert 2.0 + 2.0 > 3.0 and welch_half_width(s, 10, s, 10) == pytest.approx(2.1009 * s * math.sqrt(0.2), rel=1e-4)
    assert welch_half_width(s, 10, s, 10) < 3.0
    assert math.isnan(welch_half_width(s, 1, s, 10)) and welch_half_width(0.0, 3, 0.0, 3) == 0.0


def test_report_writes_plots_and_documents_with_the_numbers(tmp_path):
    folder = write(tmp_path, pd.concat([compare_table(), search_table_rows()], ignore_index=True))
    files = write_report(folder)
    names = sorted(p.name for p in files)
    assert names == ["accuracy_vs_macs.png", "accuracy_vs_params.png", "cost_vs_macs.png", "report.html",
                     "report.md", "search_heatmap.png"]
    assert {name[:-4] for name in names if name.endswith(".png")} == set(PLOTS)  # what a later report replaces
    for png in (folder / "plots").glob("*.png"):
        data = png.read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
    md = (folder / "report.md").read_text()
    assert "| compound | 1 | 3 |" in md and "82.00 ± 4.97" in md and "80.00 ± 2.48" in md
    assert "| 2 | 91.00 ± 2.48 | depth | 85.00 ± 0.00 | +6.00 ± 2.48 | compound ahead |" in md
    assert "within noise" in md and "81.1" in md and "not the same numbers" in md
    assert "| 1.4 | 1.1 |" in md and "INFEASIBLE" in md
    page = (folder / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "82.00 ± 4.97" in page
    assert not list(folder.glob(".*.tmp")) and not list((folder / "plots").glob(".*.tmp"))


def test_search_only_table_gets_a_heatmap_and_no_strategy_curves(tmp_path):
    files = write_report(write(tmp_path, search_table_rows()))
    assert sorted(p.name for p in files if p.suffix == ".png") == ["cost_vs_macs.png", "search_heatmap.png"]
    md = (tmp_path / "report.md").read_text()
    # Best first: the last feasible point (α = 1.4, β = 1.0) at 74 %.
    lines = md.split("## Grid search at φ = 1")[1].splitlines()
    first = lines[next(i for i, line in enumerate(lines) if line.startswith("|---")) + 1]
    assert first.startswith("| 1.4 | 1 |") and first.endswith("| 74.00 |")


def test_compare_only_table_gets_curves_and_no_heatmap(tmp_path):
    files = write_report(write(tmp_path, compare_table()))
    assert "search_heatmap.png" not in {p.name for p in files}
    assert "accuracy_vs_macs.png" in {p.name for p in files}


def test_table_with_only_failed_rows_still_reports(tmp_path):
    df = compare_table().assign(state="FAIL", val_acc=None)
    files = write_report(write(tmp_path, df))
    assert [p.name for p in files] == ["report.md", "report.html"]
    assert "Nothing to compare yet" in (tmp_path / "report.md").read_text()


def test_missing_or_empty_table_is_one_line_error(tmp_path):
    with pytest.raises(UserError, match="no results table"):
        write_report(tmp_path)
    (tmp_path / "trials.csv").write_text("")
    with pytest.raises(UserError, match="empty"):
        write_report(tmp_path)
    (tmp_path / "trials.csv").write_text("trial,strategy,phi,state,val_acc\n")
    with pytest.raises(UserError, match="no rows"):
        write_report(tmp_path)


def test_cli_report_writes_into_out_and_fails_in_one_line(tmp_path):
    write(tmp_path, compare_table())
    out = run_cli("report", str(tmp_path), "--out", str(tmp_path / "elsewhere"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "elsewhere" / "report.html").is_file() and not (tmp_path / "report.html").exists()
    missing = run_cli("report", str(tmp_path / "nope"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "nope/trials.csv: no results table" in missing.stderr


def test_report_does_not_import_torch(tmp_path):
    write(tmp_path, compare_table())
    code = ("import sys; from effscale.report import write_report; write_report(sys.argv[1]); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    import subprocess

    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_compare_rows_and_search_rows_are_told_apart_by_point(tmp_path):
    search = search_table_rows().assign(point=lambda d: [f"a{a:g}_b{b:g}" for a, b in zip(d["alpha"], d["beta"])])
    # The comparison scaled the search's (1.2, 1.0) point; its φ = 1 compound rows must not join that cell.
    compare = compare_table().assign(alpha=1.2, beta=1.0, gamma=search.loc[2, "gamma"],
                                     point=lambda d: [f"compare_phi{p:g}" for p in d["phi"]])
    df = pd.concat([search, compare], ignore_index=True)
    grid = search_table(df).set_index(["alpha", "beta"])
    assert grid.loc[(1.2, 1.0), "n"] == 1 and grid.loc[(1.2, 1.0), "mean"] == pytest.approx(0.72)
    summary = strategy_summary(df).set_index(["strategy", "phi"])
    assert summary.loc[("compound", 1), "n"] == 3 and summary.loc[("compound", 1), "mean"] == pytest.approx(0.82)


def test_a_point_that_repeats_another_network_shows_that_networks_seeds():
    df = search_table_rows().assign(same_as=None, point=lambda d: [f"p{i}" for i in range(len(d))])
    df.loc[1, ["val_acc", "same_as"]] = [0.70, "p0"]  # p0's first seed; p0 has a second one below
    df = pd.concat([df, df.iloc[[0]].assign(seed=1, val_acc=0.60)], ignore_index=True)
    grid = search_table(df).set_index(["alpha", "beta"])
    assert grid.loc[(1.0, 1.1), "state"] == "COMPLETE, same network as p0"
    assert grid.loc[(1.0, 1.1), ["n", "mean"]].tolist() == grid.loc[(1.0, 1.0), ["n", "mean"]].tolist() == [2, pytest.approx(0.65)]
    assert grid.loc[(1.0, 1.0), "state"] == "COMPLETE" and grid.loc[(1.4, 1.1), "state"] == "INFEASIBLE"


def test_metric_test_acc_ranks_by_it_and_a_wrong_metric_writes_nothing(tmp_path):
    from effscale import cli

    table = compare_table().assign(test_acc=lambda df: 1 - df["val_acc"])
    write(tmp_path, table)
    assert cli.main(["report", str(tmp_path), "--metric", "test_acc"]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "test_acc (%)" in md and "val_acc (%)" not in md
    for wrong in ("params", "nope"):
        with pytest.raises(UserError, match=f"^--metric {wrong}: expected val_acc or test_acc$"):
            write_report(tmp_path, tmp_path / wrong, wrong)
        assert not (tmp_path / wrong).exists()
    write(tmp_path, table.assign(test_acc=math.nan))  # an image folder without test/
    with pytest.raises(UserError, match=r"^--metric test_acc: no trial has a test accuracy \(the data has no test "):
        write_report(tmp_path, tmp_path / "untested", "test_acc")
    assert not (tmp_path / "untested").exists()


def test_search_report_and_compare_break_a_tie_alike_the_cheaper_point_first():
    from effscale import results
    from effscale.results import best_point

    # Three points at the same mean accuracy (the quick sweep's tie): α=1.4 β=1 has the fewest measured
    # MACs (×2.04 against ×2.06) and is listed last; α=1.6 β=1 repeats its network (same_as), so it
    # has the same MACs and accuracy, and follows every point that trained its own network.
    rows = [row(0, "compound", 1, 0, 0.318, alpha=1.0, beta=1.4, gamma=1.0102),
            row(1, "compound", 1, 0, 0.318, alpha=1.6, beta=1.0, gamma=1.118),
            row(2, "compound", 1, 0, 0.318, alpha=1.4, beta=1.0, gamma=1.1952),
            row(3, "compound", 1, 0, 0.300, alpha=1.2, beta=1.0, gamma=1.2910)]
    table = pd.DataFrame(rows).assign(point=["p0", "p1", "p2", "p3"], macs_ratio=[2.06, 2.04, 2.04, 2.09],
                                      same_as=[None, "p2", None, None], params=1e6, test_acc=0.3, train_seconds=1.0)
    assert best_point(table) == (1.4, 1.0, 1.1952)
    assert search_table(table)[["alpha", "beta"]].values.tolist() == [[1.4, 1.0], [1.0, 1.4], [1.6, 1.0], [1.2, 1.0]]
    assert tuple(results.seed_summary(table).iloc[0][["alpha", "beta"]]) == (1.4, 1.0)


def test_a_table_without_comparison_rows_shows_compound_at_the_point_compare_would_take():
    # p2 repeats p1's network (same_as) with p1's first seed alone: p1, over both its seeds, is the best point.
    rows = [row(0, "compound", 1, 0, 0.80, alpha=1.2, beta=1.1, gamma=1.1736),
            row(1, "compound", 1, 1, 0.70, alpha=1.2, beta=1.1, gamma=1.1736),
            row(2, "compound", 1, 0, 0.80, alpha=1.25, beta=1.1, gamma=1.15),
            row(3, "width", 1, 0, 0.74), row(4, "width", 1, 1, 0.72)]
    table = pd.DataFrame(rows).assign(point=["p1", "p1", "p2", "w", "w"], same_as=[None, None, "p1", None, None])
    compound = strategy_summary(table).set_index("strategy").loc["compound"]
    assert (compound["n"], compound["mean"]) == (2, pytest.approx(0.75))


def test_error_bars_stop_at_0_and_100_percent():
    from effscale.report import _bars

    rows = pd.DataFrame({"mean": [0.365, 0.90, 0.5], "ci95": [0.8259, 0.2, float("nan")]})
    low, high = _bars(rows)
    assert low == pytest.approx([36.5, 20.0, 0.0]) and high == pytest.approx([63.5, 10.0, 0.0])


def test_a_heatmap_cell_says_how_many_seeds_its_mean_is_over_when_more_than_one():
    from effscale.report import heatmap_label

    cell = pd.Series({"mean": 0.3134, "gamma": 1.1785, "n": 1})
    assert heatmap_label(cell) == "31.3\nγ=1.18"
    assert heatmap_label(pd.Series({"mean": 0.3134, "gamma": 1.1785, "n": 2})) == "31.3\nγ=1.18\n2 seeds"


def test_a_candidate_out_of_device_memory_reads_so_in_the_reports_search_table(tmp_path):
    df = search_table_rows().assign(peak_mem_mb=120.0)
    df.loc[df["state"] == "INFEASIBLE", "peak_mem_mb"] = math.inf  # measure.cuda_peak_train_mb: did not fit
    write(tmp_path, df)  # through the CSV, as a report reads it
    write_report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "| out of memory |" in text and "| inf |" not in text and "| 120 |" in text


@pytest.mark.parametrize("sweep", ["quick", "fashion_mnist"])
def test_the_committed_reports_are_what_their_tables_give_now(tmp_path, sweep):
    """The numbers in the README and results/ come from these reports: they must not drift from the code."""
    write_report(REPO / "results" / sweep, tmp_path)
    assert (tmp_path / "report.md").read_text() == (REPO / "results" / sweep / "report.md").read_text()


@pytest.mark.parametrize("column", ["strategy", "phi", "alpha", "beta", "gamma"])
def test_a_table_with_a_column_emptied_by_hand_is_one_line_naming_it(tmp_path, column):
    write(tmp_path, compare_table().assign(**{column: None}))
    with pytest.raises(UserError, match=rf"trials.csv: column {column}, row 1: blank; every row of an effscale table "
                                        r"has one$"):
        write_report(tmp_path)
    assert not (tmp_path / "plots").exists()


def test_a_table_with_a_word_where_a_number_belongs_is_one_line_naming_the_cell(tmp_path):
    table = compare_table()
    table["val_acc"] = table["val_acc"].astype(object)
    table.loc[2, "val_acc"] = "abc"
    write(tmp_path, table)
    with pytest.raises(UserError, match=r"trials.csv: column val_acc, row 3: 'abc' is not a number$"):
        write_report(tmp_path)
    assert not (tmp_path / "plots").exists()


@pytest.mark.parametrize("second, message", [
    ("compound,1,0.7,COMP", r"row 2 has 4 of the header's 5 fields \(cut off, or edited by hand\?\); once it is moved "
                             r"aside, the search's command writes it again from its study \(a comparison's rows are "
                             r"only in the table\)$"),
    ("compound,1,0.7,COMPLETE,1,x\n", r"not a readable CSV table \(Error tokenizing data"),
    ("compound,1,inf,COMPLETE,1\n", r"column val_acc, row 2: inf is not an accuracy between 0 and 1$"),
    ("compound,1,85,COMPLETE,1\n", r"column val_acc, row 2: 85 is not an accuracy between 0 and 1$"),
    ("compound,1,0.7,WEIRD,1\n", r"column state, row 2: 'WEIRD' is not one of COMPLETE, PRUNED, FAIL, INFEASIBLE$"),
])
def test_a_table_cut_off_or_edited_into_nonsense_is_one_line_for_the_report_search_and_compare(tmp_path, second,
                                                                                                message):
    from effscale.results import read_trials

    (tmp_path / "trials.csv").write_text("strategy,phi,val_acc,state,seed\ncompound,1,0.8,COMPLETE,0\n" + second)
    with pytest.raises(UserError, match=message):
        write_report(tmp_path)
    if "accuracy" not in message and "state" not in message:  # what search and compare read their table with
        with pytest.raises(UserError, match=message):
            read_trials(tmp_path)
    assert not (tmp_path / "plots").exists()


def test_a_table_of_two_comparisons_reports_the_one_written_last_and_says_what_it_left_out(tmp_path):
    first = compare_table().assign(point=lambda d: [f"compare_phi{p:g}_a1.2" for p in d["phi"]])
    # The same sweep compared again with other coefficients: its models all 0.1 points below the first's.
    second = first.assign(alpha=1.4, beta=1.05, gamma=1.1, val_acc=first["val_acc"] - 0.1,
                          trial=first["trial"] + len(first), point=lambda d: d["point"].str.replace("a1.2", "a1.4"))
    # And a width model at φ = 2 planned again (another compare.macs_tolerance) for seed 0 only: it replaces
    # the seeds of the model before it rather than joining them.
    replanned = second[(second["strategy"] == "width") & (second["phi"] == 2)].head(1).assign(
        width_mult=1.5, val_acc=0.5, trial=100, seed=0)
    second = second[~((second["strategy"] == "width") & (second["phi"] == 2) & (second["seed"] == 0))]
    summary = strategy_summary(pd.concat([first, second, replanned], ignore_index=True)).set_index(["strategy", "phi"])
    assert summary.loc[("compound", 1), "n"] == 3 and summary.loc[("compound", 1), "mean"] == pytest.approx(0.72)
    assert summary.loc[("baseline", 0), "n"] == 3 and summary.loc[("baseline", 0), "mean"] == pytest.approx(0.61)
    assert summary.loc[("width", 2), "n"] == 1 and summary.loc[("width", 2), "mean"] == pytest.approx(0.5)
    write_report(write(tmp_path, pd.concat([first, second, replanned], ignore_index=True)))
    md = (tmp_path / "report.md").read_text()
    assert "The strategies compared are those of the latest comparison with results to compare "\
           "(α=1.4 β=1.05 γ=1.1)" in md
    assert "Left out: 29 completed trainings of other comparisons or earlier plans (α=1.2 β=1.1 γ=1.15; " \
           "α=1.4 β=1.05 γ=1.1)" in md


def test_a_search_run_at_another_phi_gets_its_grid_and_heatmap(tmp_path):
    files = write_report(write(tmp_path, search_table_rows().assign(phi=2)))
    assert "search_heatmap.png" in {p.name for p in files}
    assert "## Grid search at φ = 2" in (tmp_path / "report.md").read_text()


def test_the_heatmaps_colour_bar_names_the_metric_it_shows(tmp_path, monkeypatch):
    from effscale import report

    labels = []
    monkeypatch.setattr(report, "_save", lambda fig, path: labels.append(fig.axes[-1].get_ylabel()))
    grid = search_table(search_table_rows(), "val_acc")
    report.plot_search_heatmap(grid, tmp_path / "a.png", 1, "test_acc")
    report.plot_search_heatmap(grid, tmp_path / "b.png")
    assert labels == ["test accuracy (%), mean over seeds", "validation accuracy (%), mean over seeds"]


def test_a_single_seed_on_one_side_only_is_named_in_the_margin_sentence():
    df = compare_table()
    df = df[~((df["strategy"] == "depth") & (df["phi"] == 2) & (df["seed"] > 0))]
    sentences = margin_sentences(compound_margin(strategy_summary(df)))
    assert "At φ = 2 compound is 6.00 points ahead of depth (depth has one seed: no interval, no verdict)." \
        in sentences


def test_paper_table_is_left_out_when_no_model_has_a_macs_ratio(tmp_path):
    write_report(write(tmp_path, compare_table().assign(macs_ratio=None)))
    assert "Beside the paper" not in (tmp_path / "report.md").read_text()


def test_an_unwritable_plots_folder_is_one_line_naming_it_before_anything_is_drawn(tmp_path, monkeypatch, capsys):
    from effscale import cli, report

    write(tmp_path, compare_table())
    plots = tmp_path / "plots"
    plots.mkdir(mode=0o555)
    if os.geteuid() == 0:  # root writes anyway: the folder reads as unwritable instead
        access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != plots and access(path, mode, **kw))
    drawn = []
    monkeypatch.setattr(report, "plot_accuracy_vs_cost", lambda *args: drawn.append(args[-1]))
    try:
        assert cli.main(["report", str(tmp_path)]) == 2
    finally:
        plots.chmod(0o755)
    assert capsys.readouterr().err == f"effscale report: {plots}: cannot write the report there (Permission denied)\n"
    assert drawn == [] and sorted(os.listdir(tmp_path)) == ["plots", "trials.csv"] and not list(plots.iterdir())


def test_a_full_disk_while_drawing_is_one_line_and_leaves_the_previous_report(tmp_path, monkeypatch):
    from effscale import report

    write(tmp_path, compare_table())
    write_report(tmp_path)
    write(tmp_path, compare_table().assign(val_acc=lambda df: df["val_acc"] - 0.1))
    before = files_in(tmp_path)
    written = []

    def fills_the_disk(path, write, binary=False):  # the first plot fits, the second does not
        written.append(path)
        if len(written) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, write, binary)

    real = report.write_atomically
    monkeypatch.setattr(report, "write_atomically", fills_the_disk)
    with pytest.raises(UserError, match=f"^{re.escape(str(tmp_path))}: cannot write the report there \\(No space "):
        write_report(tmp_path)
    assert files_in(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["plots", "report.html", "report.md",
                                                                             "trials.csv"]
    with pytest.raises(UserError, match="No space left on device"):
        write_report(tmp_path, tmp_path / "new" / "report")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("in_the_way", ["report.html", "plots/accuracy_vs_macs.png"])
def test_a_folder_where_a_report_file_goes_is_one_line_before_anything_is_written(tmp_path, in_the_way):
    write(tmp_path, compare_table())
    (tmp_path / "out" / in_the_way).mkdir(parents=True)
    with pytest.raises(UserError, match=f"^{re.escape(str(tmp_path / 'out' / in_the_way))}: a folder where the "
                                        "report writes a file; move it aside"):
        write_report(tmp_path, tmp_path / "out")
    assert not files_in(tmp_path / "out")  # report.md was written before report.html failed to move


def test_plots_on_another_file_system_are_copied_into_place(tmp_path, monkeypatch):
    write(tmp_path, compare_table())
    real = os.replace

    def across_disks(src, dst):  # plots/ a link to another disk: no rename from the staging folder
        if ".report." in str(src) and ".report." not in str(dst) and dst.parent.name == "plots":
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", across_disks)
    files = write_report(tmp_path)
    assert [p.name for p in files if p.parent.name == "plots"] and all(p.stat().st_size > 0 for p in files)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_ctrl_c_while_drawing_leaves_the_previous_report_as_it_was_and_no_new_folder(tmp_path, monkeypatch):
    from effscale import report

    write(tmp_path, pd.concat([compare_table(), search_table_rows()], ignore_index=True))
    write_report(tmp_path)
    write(tmp_path, pd.concat([compare_table().assign(val_acc=lambda df: df["val_acc"] - 0.1), search_table_rows()],
                              ignore_index=True))
    before = files_in(tmp_path)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "plot_search_heatmap", interrupted)  # after the accuracy curves are drawn
    with pytest.raises(KeyboardInterrupt):
        write_report(tmp_path)
    assert files_in(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["plots", "report.html", "report.md",
                                                                             "trials.csv"]
    with pytest.raises(KeyboardInterrupt):
        write_report(tmp_path, tmp_path / "new" / "report")
    assert not (tmp_path / "new").exists()


def test_a_newer_comparison_that_has_completed_only_its_baseline_hides_nothing(tmp_path):
    first = compare_table().assign(point=lambda d: [f"compare_phi{p:g}_a1.2" for p in d["phi"]])
    # Compared again with other coefficients: the baseline done, every scaled model failed (or still running).
    second = first.assign(alpha=1.4, beta=1.05, gamma=1.1, trial=first["trial"] + len(first),
                          point=lambda d: d["point"].str.replace("a1.2", "a1.4"))
    second.loc[second["phi"] > 0, ["state", "val_acc"]] = ["FAIL", None]
    df = pd.concat([first, second], ignore_index=True)
    summary = strategy_summary(df).set_index(["strategy", "phi"])
    assert summary.loc[("compound", 1), "mean"] == pytest.approx(0.82) and len(summary) == 9
    write_report(write(tmp_path, df))
    md = (tmp_path / "report.md").read_text()
    assert "Nothing to compare yet" not in md and "(α=1.2 β=1.1 γ=1.15)" in md
    assert "Left out: 3 completed trainings of other comparisons or earlier plans (α=1.4 β=1.05 γ=1.1)" in md


def test_seeds_without_spread_give_no_verdict_however_far_apart_the_means():
    df = compare_table()
    for (strategy, phi), accuracy in {("compound", 1): 0.10, ("width", 1): 0.11, ("depth", 1): 0.10,
                                      ("resolution", 1): 0.10}.items():
        df.loc[(df["strategy"] == strategy) & (df["phi"] == phi), "val_acc"] = accuracy
    margin = compound_margin(strategy_summary(df)).set_index("phi")
    assert margin.loc[1, "verdict"] == "no spread: no interval" and margin.loc[2, "verdict"] == "compound ahead"
    text = margin_sentences(margin.reset_index())
    assert "At φ = 1 compound is 1.00 points behind width; every seed of each scored the same" in text
    assert "beyond noise" not in text.split("At φ = 2")[0]


@pytest.mark.parametrize("drop", [["alpha", "beta", "gamma", "point"], ["point"]])
def test_a_table_without_the_coefficient_or_point_columns_still_reports(tmp_path, drop):
    df = search_table_rows().assign(point=lambda d: [f"p{i}" for i in range(len(d))], same_as=None)
    df.loc[1, "same_as"] = "p0"
    files = write_report(write(tmp_path, df.drop(columns=drop)))
    assert (tmp_path / "report.md").is_file() and "report.html" in {p.name for p in files}


def test_plots_an_earlier_report_drew_go_when_the_table_no_longer_supports_them(tmp_path):
    write_report(write(tmp_path, pd.concat([compare_table(), search_table_rows()], ignore_index=True)))
    assert (tmp_path / "plots" / "accuracy_vs_macs.png").is_file()
    (tmp_path / "plots" / "mine.png").write_bytes(PNG)  # not the report's: stays
    files = write_report(write(tmp_path, search_table_rows()))
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["cost_vs_macs.png", "mine.png",
                                                                       "search_heatmap.png"]
    assert "accuracy_vs_macs" not in (tmp_path / "report.md").read_text() and len(files) == 4


def test_a_strategy_at_the_baselines_parameters_is_drawn_beside_the_baseline_not_on_it(tmp_path, monkeypatch):
    from effscale import report

    drawn = {}

    def keep(fig, path):
        ax = fig.axes[0]
        drawn["legend"] = [t.get_text() for t in ax.get_legend().get_texts()]
        drawn["lines"] = {bars.get_label(): list(bars.lines[0].get_xdata()) for bars in ax.containers}
        drawn["notes"] = [t.get_text() for t in ax.texts]

    monkeypatch.setattr(report, "_save", keep)
    rows = [("baseline", 0, 1.0e6, 0.78), ("resolution", 1, 1.0e6, 0.80), ("resolution", 2, 1.0e6, 0.81),
            ("width", 1, 2.0e6, 0.79), ("width", 2, 4.0e6, 0.80)]
    summary = pd.DataFrame([{"strategy": s, "phi": p, "params": n, "mean": m, "ci95": 0.01} for s, p, n, m in rows])
    report.plot_accuracy_vs_cost(summary, "params", "parameters", "t", tmp_path / "p.png")
    beside = "resolution (the baseline's parameters: drawn beside it)"
    assert drawn["legend"][:2] == [beside, "width"]
    assert drawn["lines"][beside] == pytest.approx([1.0, 1.03, 1.06])  # φ = 0, 1, 2, in millions
    assert drawn["lines"]["width"] == pytest.approx([1.0, 2.0, 4.0])  # a strategy that moves is drawn where it is
    assert drawn["notes"].count("φ=1") == 1 and drawn["notes"].count("φ=2") == 1  # resolution's


def test_a_sweep_trained_on_several_devices_or_precisions_says_so_and_one_trained_alike_does_not(tmp_path):
    from effscale.results import mixed_training

    table = search_table_rows().assign(device="cpu", precision="32-true")
    assert mixed_training(table) is None
    assert mixed_training(search_table_rows()) is None  # a table written before these columns were
    resumed = table.copy()
    resumed.loc[resumed.index[:2], ["device", "precision"]] = ["NVIDIA H100 80GB HBM3", "bf16-mixed"]
    resumed.loc[resumed.index[-1], "precision"] = "16-mixed"  # INFEASIBLE: never trained, never counted
    assert mixed_training(resumed) == ("trials trained on several devices cpu (3), NVIDIA H100 80GB HBM3 (2) and "
                                       "precisions 32-true (3), bf16-mixed (2): compare them with care")
    write_report(write(tmp_path, resumed))
    md = (tmp_path / "report.md").read_text()
    assert "device: NVIDIA H100 80GB HBM3, cpu. precision: 16-mixed, 32-true, bf16-mixed." in md
    assert "**Trials trained on several devices cpu (3), NVIDIA H100 80GB HBM3 (2) and precisions" in md
    page = (tmp_path / "report.html").read_text()  # bold there too, not markdown's asterisks
    assert "<strong>Trials trained on several devices cpu (3)" in page and "**" not in page
