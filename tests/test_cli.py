"""`effscale measure` as a user runs it, and the one-line errors of bad overrides."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_cli


def test_measure_b7_prints_params():
    out = run_cli("measure", "baseline=efficientnet_b0", "variant=b7")
    assert out.returncode == 0, out.stderr
    assert "66,347,960" in out.stdout and "efficientnet_b7" in out.stdout


def test_measure_json_has_contract_keys():
    out = run_cli("measure", "measure.variants=[b0,b1]", "format=json", "measure.memory=false")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["name"] for r in rows] == ["efficientnet_b0", "efficientnet_b1"]
    for key in ("name", "params", "macs", "flops", "activations", "resolution", "width_mult", "depth_mult"):
        assert key in rows[0]
    assert rows[1]["resolution"] == 240 and rows[1]["depth_mult"] == 1.1 and rows[0]["params"] == 5_288_548


def test_measure_compound_phi_uses_alpha_beta_gamma():
    out = run_cli("measure", "scale.phi=1", "format=json", "measure.memory=false")
    row = json.loads(out.stdout)
    assert row["depth_mult"] == pytest.approx(1.2) and row["width_mult"] == pytest.approx(1.1)
    assert row["resolution"] == 258  # 224 · 1.15 = 257.6 → 258 px
    assert row["name"] == "efficientnet_b0-phi1"


@pytest.mark.parametrize("args, needle", [
    (["baseline=nope"], "baseline=nope: no such option"),
    (["baseline="], "baseline=: no option given; available: efficientnet_b0, efficientnet_lite0, mobilenet_v2,"),
    # A file where an option's name goes: Hydra's message would split its path at the wrong slash.
    (["baseline=/abs/conf/baseline/resnet18.yaml"], "baseline=/abs/conf/baseline/resnet18.yaml: an option is named "
                                                    "without its folder or .yaml: baseline=resnet18"),
    (["baseline=nets/my_net.yaml"], "baseline=nets/my_net.yaml: baseline takes an option's name, not a file; put "
                                    "the file in a folder of your own as baseline/NAME.yaml and add "
                                    "'hydra.searchpath=[file:///ABS/FOLDER]' baseline=NAME"),
    (["scale.phi=-1"], "scale.phi must be >= 0"),
    (["scale.phi=abc"], "scale.phi must be a number"),
    (["scale.alpha=0.9", "scale.phi=1"], "scale.alpha must be >= 1"),
    (["variant=b9"], "variant: expected null or one of b0, b1, b2, b3, b4, b5, b6, b7, got 'b9'"),
    (["nokey=1"], "nokey: unknown key (check the spelling; effscale measure --help shows every key)"),
    (["sweep=quick"], "sweep: not in the config until added: +sweep=NAME (fashion_mnist, paper_grid, quick, "),
    (["+sweep=quick", "+sweep=slurm"], "+sweep given more than once: to combine presets, list them: "
                                       "'+sweep=[quick,slurm]'"),
    (["format=xml"], "format=xml"),
    (["variant=b1", "measure.variants=all"], "variant and measure.variants are both set"),
    (["measure.variants=some"], "measure.variants: expected all or a list of b0, b1, b2, b3, b4, b5, b6, b7, got 'some'"),
    (["measure.variants=[b1,b9]"], "measure.variants: expected all or a list of"),
    (["measure.variants=b0,b1"], "measure.variants=b0,b1: a comma outside brackets is Hydra's sweep syntax; write "
                                 "a list as measure.variants=[b0,b1], or text in quotes: 'measure.variants=\"b0,b1\"'"),
])
def test_bad_override_one_line_exit_2(args, needle):
    out = run_cli("measure", *args)
    assert out.returncode == 2
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and needle in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_a_key_given_to_a_launcher_mapping_that_holds_none_yet_says_how_to_add_it():
    from effscale.config import compose
    from effscale.errors import UserError

    key = "hydra.launcher.additional_parameters"
    with pytest.raises(UserError, match=re.escape(f"{key}: has no key mail-type (add keys to it with "
                                                  f"'++{key}={{key: value}}')")):
        compose("search", ["+sweep=slurm", f"{key}={{mail-type:END}}"], hydra=True)
    cfg = compose("search", ["+sweep=slurm", f"++{key}={{mail-type:END}}"], hydra=True)  # as the README writes it
    assert dict(cfg.hydra.launcher.additional_parameters) == {"mail-type": "END"}


def test_a_key_of_the_comparisons_own_recipe_is_not_called_a_misspelling_and_the_forms_that_add_it_work():
    from effscale.config import load
    from effscale.errors import UserError

    with pytest.raises(UserError, match=re.escape("compare.trainer.max_epochs: compare.trainer holds no keys until "
                                                  "they are added: '++compare.trainer.max_epochs=VALUE', or "
                                                  "'++compare.trainer={max_epochs: VALUE}'")):
        load("compare", ["compare.trainer.max_epochs=1"])
    for form in ("++compare.trainer.max_epochs=1", "++compare.trainer={max_epochs: 1}"):
        assert load("compare", [form])["compare"]["trainer"] == {"max_epochs": 1}


@pytest.mark.parametrize("args", [
    ["measure", "scale.phi=-1"], ["measure", "format=xml"], ["search", "trainer.lr=abc"],
    ["search", "baseline=nope"], ["compare", "compare.seeds=0"], ["finetune", "finetune.recipe.momentum=1.5"],
    ["predict", "photo.jpg", "--top", "many"], ["predict", "no-such-photo.jpg"], ["predict", "README.md"],
    ["dashboard", "results/quick", "--port", "70000"], ["report", "results/quick", "--out", ""],
    ["dashboard", "--storage", " "],
])
def test_a_mistyped_override_or_argument_is_answered_before_torch_is_imported(args):
    code = ("import sys; from effscale.cli import main; status = main(sys.argv[1:]); "
            "print('torch imported' if 'torch' in sys.modules else 'no torch'); sys.exit(status)")
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith(f"effscale {args[0]}: "), done.stderr
    assert done.stdout == "no torch\n"


def group_lines(help_text: str) -> list[str]:
    """The group names `effscale COMMAND --help` lists under "config groups"."""
    listed = help_text.split("config groups (choose with group=option):\n", 1)[1].split("\n\n", 1)[0]
    return [line.split()[0] for line in listed.splitlines()]


@pytest.mark.parametrize("command, groups", [
    ("measure", ["baseline", "data"]),
    ("search", ["baseline", "data", "budget", "search", "strategy", "trainer", "logger", "sweep"]),
    ("compare", ["baseline", "data", "budget", "search", "strategy", "trainer", "logger", "sweep"]),
    ("finetune", ["data"]),  # the architecture comes from the weights
])
def test_help_lists_the_groups_the_command_reads(command, groups, capsys):
    from effscale import cli

    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert group_lines(out) == groups
    assert "  baseline  efficientnet_b0, efficientnet_lite0, mobilenet_v2, resnet101" in out or command == "finetune"
    assert ("\nbaseline:" in out) == (command != "finetune")  # the composed config below the groups


def test_help_lists_the_baselines_and_presets_of_a_config_folder_on_the_search_path(tmp_path, capsys):
    from effscale import cli

    for group, name in (("baseline", "tinynet"), ("sweep", "mine")):
        (tmp_path / group).mkdir()
        (tmp_path / group / f"{name}.yaml").write_text("name: x\n")
    assert cli.main(["search", "--help", f"hydra.searchpath=[file://{tmp_path}]"]) == 0
    out = capsys.readouterr().out
    assert "  baseline  efficientnet_b0, " in out and ", resnet50, tinynet\n" in out
    assert "  sweep     fashion_mnist, mine, paper_grid, quick, " in out


def test_help_with_multirun_is_the_help(capsys):
    from effscale import cli

    assert cli.main(["search", "-m", "--help"]) == 0 and "sweep     " in capsys.readouterr().out
    assert cli.main(["compare", "+sweep=quick", "--help"]) == 0
    assert group_lines(capsys.readouterr().out).count("sweep") == 1


def test_finetune_refuses_settings_it_does_not_read(capsys):
    from effscale import cli

    assert cli.main(["finetune", "baseline=resnet50"]) == 2
    assert capsys.readouterr().err == ("effscale finetune: baseline=resnet50: effscale finetune does not read "
                                       "baseline (the architecture is the weights' own, finetune.weights; the input "
                                       "size is data.resolution)\n")
    assert cli.main(["finetune", "scale.width=2"]) == 2 and "does not read scale" in capsys.readouterr().err


@pytest.mark.parametrize("given, expected", [
    ({}, ("3000", None)),  # spin briefly, then sleep (benchmarks/wait_policy.py)
    ({"OMP_WAIT_POLICY": "PASSIVE"}, (None, "PASSIVE")),  # a user's own setting wins
    ({"GOMP_SPINCOUNT": "0"}, ("0", None)),
])
def test_the_command_sets_how_openmp_threads_wait_unless_the_user_did(given, expected):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | given
    code = "import os, effscale.cli; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(v) for v in expected]


def test_help_and_version_print_and_a_missing_or_unknown_command_is_exit_2(capsys):
    import importlib.metadata

    from effscale import cli

    assert cli.main(["--help"]) == 0 and "commands:\n  measure" in capsys.readouterr().out
    assert cli.main([]) == 2 and "commands:\n  measure" in capsys.readouterr().err
    assert cli.main(["serach"]) == 2
    assert capsys.readouterr().err == ("effscale: unknown command 'serach'; expected one of measure, search, compare, "
                                       "report, dashboard, predict, finetune\n")
    installed = importlib.metadata.version("effscale")  # pyproject.toml's, which __version__ must match
    assert cli.main(["--version"]) == 0 and capsys.readouterr().out == f"effscale {installed}\n"


def test_debug_raises_the_user_error_with_its_traceback():
    from effscale import cli
    from effscale.errors import UserError

    with pytest.raises(UserError, match="^variant: expected null or one of b0"):
        cli.main(["measure", "variant=b9", "--debug"])


@pytest.mark.parametrize("device, message", [
    ("tpu", "device=tpu: expected auto, cpu, cuda or cuda:N"),
    ("cudax", "device=cudax: expected auto, cpu, cuda or cuda:N"),
    ("cuda:x", "device=cuda:x: expected auto, cpu, cuda or cuda:N"),
])
def test_a_device_that_is_not_one_is_one_line(device, message):
    from effscale.devices import resolve_device
    from effscale.errors import UserError

    with pytest.raises(UserError) as caught:
        resolve_device(device)
    assert str(caught.value) == message


def test_cuda_where_there_is_none_is_one_line(monkeypatch):
    import torch

    from effscale.devices import resolve_device
    from effscale.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(UserError, match="^device=cuda:1: no CUDA device is available on this machine$"):
        resolve_device("cuda:1")


def _cgroups(tmp_path, membership, files):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "self").write_text(membership)
    return tmp_path, tmp_path / "self"


@pytest.mark.parametrize("membership, files, quota", [
    # v2: the smallest quota from the process's cgroup up to the root
    ("0::/pod/job\n", {"pod/job/cpu.max": "max 100000\n", "pod/cpu.max": "150000 100000\n"}, 1.5),
    ("0::/job\n", {"job/cpu.max": "200000 50000\n", "cpu.max": "max 100000\n"}, 4.0),
    # a container's own cgroup is the mount's root, under a name that does not exist there
    ("0::/docker/abc\n", {"cpu.max": "300000 100000\n"}, 3.0),
    # v1, with cpu and cpuacct mounted together; -1 is no quota
    ("4:memory:/x\n2:cpu,cpuacct:/x\n",
     {"cpu,cpuacct/x/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/x/cpu.cfs_period_us": "100000\n"}, 0.5),
    ("2:cpu,cpuacct:/\n", {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
     None),
    ("0::/\n", {}, None),
])
def test_a_cgroup_cpu_quota_is_read_from_the_process_cgroup_up(tmp_path, membership, files, quota):
    from effscale.devices import cgroup_cpu_quota

    assert cgroup_cpu_quota(*_cgroups(tmp_path, membership, files)) == quota


def test_threads_and_workers_fit_a_cpu_quota_below_the_cores_the_process_may_run_on(monkeypatch):
    from effscale import devices

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(devices, "cgroup_cpu_quota", lambda: 1.5)
    assert devices.available_cores() == 2
    monkeypatch.setattr(devices, "cgroup_cpu_quota", lambda: None)
    assert devices.available_cores() == 64
    monkeypatch.setattr(devices, "cgroup_cpu_quota", lambda: 0.2)
    assert devices.available_cores() == 1


def test_measure_all_variants_as_csv_has_the_json_keys_and_b0_to_b7():
    import csv
    import io

    out = run_cli("measure", "measure.variants=all", "format=csv", "measure.memory=false")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["name"] for r in rows] == [f"efficientnet_b{i}" for i in range(8)]
    assert [int(r["resolution"]) for r in rows] == [224, 240, 260, 300, 380, 456, 528, 600]
    assert int(rows[7]["params"]) == 66_347_960
    one = json.loads(run_cli("measure", "format=json", "measure.memory=false").stdout)
    assert list(rows[0]) == list(one)


def test_an_unknown_flag_is_one_line_naming_it(capsys):
    from effscale import cli

    assert cli.main(["measure", "--foo"]) == 2
    assert capsys.readouterr().err == ("effscale measure: unknown option --foo (effscale measure takes key=value "
                                       "overrides and --help; see effscale measure --help)\n")
    assert cli.main(["search", "--foo"]) == 2  # only search takes -m
    assert "(effscale search takes key=value overrides, -m and --help;" in capsys.readouterr().err


def test_a_value_hydra_cannot_parse_unquoted_is_one_line_showing_it_quoted(capsys):
    from effscale import cli

    assert cli.main(["measure", "data.root=~/fashion"]) == 2
    assert capsys.readouterr().err == ("effscale measure: data.root=~/fashion: Hydra cannot parse this value; put it "
                                       "in quotes: 'data.root=\"~/fashion\"'\n")
    assert cli.main(["measure", "name=a]b"]) == 2  # a parser error, not the lexer's
    assert capsys.readouterr().err == ("effscale measure: name=a]b: Hydra cannot parse this value; put it in quotes: "
                                       "'name=\"a]b\"'\n")
    assert cli.main(["measure", "name"]) == 2  # Hydra's first line, "Error parsing override", is not the why
    assert capsys.readouterr().err == "effscale measure: name: Hydra cannot parse it (missing EQUAL at '<EOF>')\n"
    assert cli.main(["measure", "na~me=x"]) == 2  # the key is wrong: quoting the value would not help
    assert capsys.readouterr().err == ("effscale measure: na~me=x: Hydra cannot parse it (mismatched input '~' "
                                       "expecting EQUAL)\n")
    assert cli.main(["measure", "scale={phi:[1}"]) == 2  # quotes would not help: it names the override and why
    assert capsys.readouterr().err == ("effscale measure: scale={phi:[1}: Hydra cannot parse it (no viable alternative "
                                       "at input '{phi:[1}')\n")


def test_output_into_a_closed_pipe_is_no_error_and_python_m_effscale_runs():
    """`effscale measure … | head -1`: the reader goes away before the output is written."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout block-buffered, as usual
    proc = subprocess.Popen([sys.executable, "-m", "effscale", "measure", "measure.variants=all", "format=csv",
                             "measure.memory=false"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and err == ""


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
@pytest.mark.parametrize("args", [["measure", "measure.memory=false"], ["measure", "--help"], ["--help"]])
def test_output_onto_a_full_disk_is_one_line_exit_1(args):
    with open("/dev/full", "w") as full:  # every write fails with ENOSPC, as on a full disk or quota
        proc = subprocess.run([sys.executable, "-m", "effscale", *args], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=300)
    command = f"effscale {args[0]}" if args[0] != "--help" else "effscale"
    assert (proc.returncode, proc.stderr) == (1, f"{command}: stopped: No space left on device\n")


def test_only_the_cli_layer_imports_the_cli_layer():
    """cli.py parses, commands.py runs a command: the modules they call never reach back up to them."""
    import ast

    package = REPO / "effscale"
    cli_layer = {"effscale.cli", "effscale.commands"}
    reaching_up = []
    for path in package.rglob("*.py"):
        if path.name in ("cli.py", "commands.py", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):  # `from effscale import commands` too
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                names = []
            reaching_up += [f"{path.relative_to(REPO)}: {n}" for n in names if n in cli_layer]
    assert reaching_up == []


TINYNET = """name: tinynet
family: resnet
resolution: 32
activation: relu
stem: {channels: 16, kernel: 3, stride: 1}
stages:
  - {block: basic, stride: 1, channels: 16, repeats: 1}
  - {block: basic, stride: 2, channels: 32, repeats: 1}
head: null
"""


def test_a_users_own_baseline_on_the_search_path_is_measured_and_a_typo_or_bad_yaml_in_it_is_one_line(tmp_path):
    (tmp_path / "conf" / "baseline").mkdir(parents=True)
    (tmp_path / "conf" / "baseline" / "tinynet.yaml").write_text(TINYNET)
    (tmp_path / "conf" / "baseline" / "typo.yaml").write_text(TINYNET.replace("channels: 32", "chanels: 32"))
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    out = run_cli("measure", "baseline=tinynet", searchpath, "format=json", "measure.memory=false")
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    # stem 3·16·9 + BN; a 16→16 basic block; a 16→32 one with its 1×1 downsample; fc to 1000 classes
    params = (432 + 32) + (2 * 2304 + 2 * 32) + (4608 + 9216 + 512 + 3 * 64) + (32 * 1000 + 1000)
    assert (row["name"], row["resolution"], row["params"]) == ("tinynet", 224, params)  # the data's input size
    typo = run_cli("measure", "baseline=typo", searchpath)
    assert typo.returncode == 2 and typo.stderr == (
        "effscale measure: baseline.stages[1].chanels: unknown key for a basic block; it takes block, channels, "
        "repeats, stride, fixed_repeats\n")
    (tmp_path / "conf" / "baseline" / "latin.yaml").write_bytes(TINYNET.replace("tinynet", "caf\xe9").encode("latin-1"))
    latin = run_cli("measure", "baseline=latin", searchpath)
    assert latin.returncode == 2 and latin.stderr == (
        "effscale measure: a config file on the search path is not UTF-8 text (byte 0xe9 at offset 9)\n")
    (tmp_path / "conf" / "baseline" / "unclosed.yaml").write_text(TINYNET.replace("stride: 1}", "stride: 1"))
    unclosed = run_cli("measure", "baseline=unclosed", searchpath)
    assert unclosed.returncode == 2 and unclosed.stderr == (
        f"effscale measure: {tmp_path / 'conf' / 'baseline' / 'unclosed.yaml'}: not valid YAML at line 6, column 7: "
        "expected ',' or '}', but got ':'\n")


def test_a_warning_is_one_line_before_the_error_it_explains(tmp_path):
    missing = tmp_path / "myconf"
    out = run_cli("measure", "baseline=tinynet", f"hydra.searchpath=[file://{missing}]")
    assert out.returncode == 2 and out.stderr.splitlines() == [
        f"effscale measure: warning: provider=hydra.searchpath in command-line, path={missing} is not available.",
        "effscale measure: baseline=tinynet: no such option; available: efficientnet_b0, efficientnet_lite0, "
        "mobilenet_v2, resnet101, resnet152, resnet18, resnet34, resnet50; one of your own is baseline/tinynet.yaml "
        "in a folder given as 'hydra.searchpath=[file:///ABS/FOLDER]'"]


def test_a_warning_from_inside_lightning_is_one_line_too(monkeypatch, capsys):
    import warnings

    import lightning

    from effscale import cli

    def command(overrides):  # Lightning formats warnings from its own files its own way once imported
        warnings.warn_explicit("a hint", UserWarning, filename=lightning.__file__, lineno=1)

    monkeypatch.setitem(cli.COMMANDS, "measure", command)
    assert cli.main(["measure"]) == 0
    assert capsys.readouterr().err == "effscale measure: warning: a hint\n"


def test_measure_on_an_image_folder_counts_its_class_folders_for_the_classifier(tmp_path):
    for name in ("bag", "boot", "coat"):
        (tmp_path / name).mkdir()
    out = run_cli("measure", "baseline=resnet18", "data=imagefolder", f"data.root={tmp_path}", "format=json",
                  "measure.memory=false")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["params"] == 11_689_512 - 512 * 1000 - 1000 + 512 * 3 + 3  # fc: 3 classes, not 1000


def test_a_tiny_expand_ratio_builds_an_inverted_residual_of_one_hidden_channel(capsys):
    from effscale import cli

    # 16 channels × 0.01 rounds to none; torchvision's rounding, kept at one channel
    assert cli.main(["measure", "baseline=mobilenet_v2", "baseline.stages.1.expand=0.01", "format=json",
                     "measure.memory=false"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] > 0


def test_a_scale_past_any_trainable_network_is_one_line_not_a_hang(capsys, tmp_path):
    from effscale import cli

    assert cli.main(["measure", "scale.phi=100"]) == 2
    assert "give 1,325,087,592 blocks" in capsys.readouterr().err  # n·d before rounding: it is refused before
    assert cli.main(["compare", "+sweep=quick", "compare.phis=[0,100]", f"out={tmp_path}"]) == 2
    assert capsys.readouterr().err.startswith("effscale compare: compare.phis: depth ×8.28e+07")
    assert cli.main(["search", "+sweep=quick", "search.grid.step=0.000001", f"out={tmp_path}"]) == 2
    assert "search.grid: step 1e-06 makes 600,001 values in [1, 1.6]" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("baseline, variant, scale, name", [
    ("efficientnet_b0", None, {}, "efficientnet_b0"),
    ("efficientnet_b0", "b3", {}, "efficientnet_b3"),
    ("resnet50", "b3", {}, "resnet50-b3"),
    ("efficientnet_lite0", "b4", {}, "efficientnet_lite4"),
    ("efficientnet_b0", None, {"phi": 1, "width": 1.0, "depth": None}, "efficientnet_b0-phi1"),
    ("efficientnet_b0", None, {"width": 2}, "efficientnet_b0-w2"),
    ("efficientnet_b0", "b1", {"depth": 4, "resolution": 1.5}, "efficientnet_b1-d4-r1.5"),
])
def test_a_measured_model_is_named_by_how_it_was_scaled(baseline, variant, scale, name):
    from effscale.commands import model_name

    assert model_name(baseline, variant, scale) == name


def test_the_measure_table_says_how_many_threads_a_cpu_latency_ran_on(capsys):
    import torch

    from effscale.commands import _print_table
    from effscale.measure import human

    row = dict(name="m", resolution=32, width_mult=1.0, depth_mult=1.0, params=1, macs=1, flops=2, activations=1,
               peak_mem_mb=None, latency_ms=1.5)
    _print_table([row], "cpu", 8, human)
    assert f"latency ms (cpu, {torch.get_num_threads()} threads)" in capsys.readouterr().out.splitlines()[0]


@pytest.mark.parametrize("command, override, message", [
    ("measure", "baseline=null", "baseline=null: a config group needs an option; available: efficientnet_b0, "),
    ("finetune", "data=None", "data=None: a config group needs an option; available: cifar10, "),
    ("measure", "~baseline", "~baseline: baseline cannot be removed (effscale reads it); override its value"),
    ("search", "~seed", "~seed: seed cannot be removed (effscale reads it); override its value"),
    ("compare", "scale.alpha=abc", "scale.alpha: expected a number, got 'abc'"),
    ("compare", "scale.gamma=null", "scale.gamma: expected a number, got None"),
    ("search", "out=null", "out: expected a folder path, got None"),
    ("search", "logger.project=team/effscale", "logger.project: expected a W&B project name without / \\ # ? % : "
                                               "(a team is WANDB_ENTITY=team), got 'team/effscale'"),
])
def test_a_removed_section_or_a_value_of_the_wrong_kind_is_one_line_before_any_work(capsys, command, override,
                                                                                    message):
    from effscale import cli

    assert cli.main([command, override]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"effscale {command}: {message}") and err.count("\n") == 1


@pytest.mark.parametrize("typed", ["007", "1e3", "nan", "true", "2026.11"])
def test_a_name_is_the_folder_typed_not_the_number_or_boolean_hydra_reads(typed, capsys):
    from effscale.checks import check_config
    from effscale.cli import main
    from effscale.config import compose, name_as_typed, to_dict

    assert main(["search", f"name={typed}", "--help"]) == 0
    assert f"\nname: '{typed}'\n" in capsys.readouterr().out
    cfg = to_dict(compose("search", name_as_typed([f"name={typed}"])))
    check_config(cfg)
    assert cfg["name"] == typed


def test_a_quoted_or_interpolated_name_is_left_to_hydra():
    from effscale.config import name_as_typed

    kept = ["name='a b'", "name=${data.name}-x", "name=[a,b]", "data.name=007", "name=a,b", "name=null", "+name=x"]
    assert name_as_typed(kept) == kept
    assert name_as_typed(["++name=1e3", "name=run-2.1"]) == ["++name='1e3'", "name='run-2.1'"]
