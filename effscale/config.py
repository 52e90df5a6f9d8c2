"""Compose Hydra configs for effscale's commands, turning composition errors into one-line UserErrors."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from effscale.errors import UserError
from effscale.scaling import ScalingError, scaled_baseline

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose(command: str, overrides: list[str], hydra: bool = False) -> DictConfig:
    """The config of `command` (conf/<command>.yaml) with Hydra command-line overrides applied;
    `hydra=True` keeps Hydra's own node (launcher, sweep dir), so that `hydra/…` overrides are checked too."""
    import yaml
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    flags = [o for o in overrides if o.startswith("-")]
    if flags:  # a flag reaches Hydra's override parser as a syntax error: say what was meant instead
        takes = "key=value overrides, -m and --help" if command == "search" else "key=value overrides and --help"
        raise UserError(f"unknown option {flags[0]} (effscale {command} takes {takes}; see effscale {command} --help)")
    _check_removals(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=command):
            cfg = hydra_compose(config_name=command, overrides=overrides, return_hydra_config=hydra)
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(_one_line(exc, command, overrides)) from None
    except yaml.YAMLError as exc:  # a config file of the user's own, on hydra.searchpath
        raise UserError(_yaml_error(exc)) from None
    except UnicodeDecodeError as exc:
        raise UserError(f"a config file on the search path is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                        f"offset {exc.start})") from None
    except ValueError as exc:  # hydra=null: Hydra's own node needs its keys
        raise UserError(str(exc).splitlines()[0]) from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


# Hydra's grammar reads name=007 as 7, name=1e3 as 1000.0 and name=true as a boolean; `name` is a folder,
# so a plain value is taken as the text typed. Quoted values and interpolations are left to Hydra.
PLAIN_NAME = re.compile(r"((?:\+\+)?name)=(?!(?:null|None)$)([\w.+-]+)")


def name_as_typed(overrides: list[str]) -> list[str]:
    """The overrides with a plain `name=` value quoted, so that the sweep folder is named as typed."""
    return [f"{m[1]}='{m[2]}'" if (m := PLAIN_NAME.fullmatch(o)) else o for o in overrides]


def _check_removals(overrides: list[str]) -> None:
    """A config group set to null, or a top-level key deleted with ~, leaves a command without what it
    reads (Hydra itself refuses the first with a traceback, and allows the second): one line instead."""
    for override in overrides:
        removed = re.fullmatch(r"~(\w+)(=.*)?", override)
        if removed:
            raise UserError(f"{override}: {removed.group(1)} cannot be removed (effscale reads it); "
                            "override its value")
        key, _, value = override.partition("=")
        if not key.lstrip("+~"):  # Hydra would read `=1` as a config group's option
            raise UserError(f"{override}: an override is KEY=VALUE, and this has no key")
        if key == "hydra" and value.replace(" ", "") in ("null", "None"):
            raise UserError(f"{override}: hydra holds Hydra's own settings; set them one by one (hydra.KEY=…)")
        if value.replace(" ", "") in ("null", "None", "[]") and (CONF_DIR / key).is_dir():  # [] selects none
            raise UserError(f"{override}: a config group needs an option; available: "
                            f"{', '.join(available_options(key))}")


# Config groups a user adds options of their own to, from a folder on hydra.searchpath (README).
OWN_OPTIONS = ("baseline", "sweep")

# Mappings a config leaves empty for the user to fill (`compare.trainer`: the comparison's own recipe changes).
EMPTY_MAPPINGS = ("compare.trainer",)


def _one_line(exc: Exception, command: str, overrides: Sequence[str] = ()) -> str:
    """Hydra's messages span lines (with option lists); keep what names the key and what is wrong."""
    from hydra.errors import OverrideParseException

    text = str(exc).strip()
    missing = re.search(r"Could not find '([^']+)'", text)
    if missing:
        group, option = _group_and_option(missing.group(1), overrides)
        options = available_options(group)  # Hydra's own groups (hydra/launcher) come from plugins: not listed
        if "/" in option or option.endswith((".yaml", ".yml")):  # baseline=my_net.yaml, a file
            stem = Path(option).stem
            if stem in options:
                return f"{group}={option}: an option is named without its folder or .yaml: {group}={stem}"
            return (f"{group}={option}: {group} takes an option's name, not a file; put the file in a folder "
                    f"of your own as {group}/NAME.yaml and add 'hydra.searchpath=[file:///ABS/FOLDER]' "
                    f"{group}=NAME (README: Your own baseline)")
        what = "no such option" if option else "no option given"
        own = (f"; one of your own is {group}/{option or 'NAME'}.yaml in a folder given as "
               "'hydra.searchpath=[file:///ABS/FOLDER]'") if group in OWN_OPTIONS else ""
        return f"{group}={option}: {what}" + (f"; available: {', '.join(options)}" if options else "") + own
    unknown = re.search(r"Could not override '([^']+)'", text)
    if unknown:
        key = unknown.group(1)
        inner = re.search(r"full_key: (\S+)", str(exc.__cause__ or ""))
        if inner and inner.group(1).startswith(f"{key}."):  # a mapping that holds no keys until told to
            return (f"{key}: has no key {inner.group(1)[len(key) + 1:]} (add keys to it with "
                    f"'++{key}={{key: value}}')")
        parent, _, leaf = key.rpartition(".")
        if parent in EMPTY_MAPPINGS:
            return (f"{key}: {parent} holds no keys until they are added: '++{key}=VALUE', or "
                    f"'++{parent}={{{leaf}: VALUE}}'")
        if key == "sweep":  # the one config group no command picks by default: its presets are added
            return f"{key}: not in the config until added: +{key}=NAME ({', '.join(available_options(key))})"
        # not "+key=…": nothing would read a key the config does not have
        return f"{key}: unknown key (check the spelling; effscale {command} --help shows every key)"
    twice = re.search(r"Multiple values for (\S+)\. To override a value use 'override \S+: (\S+)'", text)
    if twice:  # +sweep=quick +sweep=slurm: Hydra's advice is for a defaults list in a file
        group = twice.group(1)
        given = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").split("=", 1)[0] == group and "=" in o]
        return f"+{group} given more than once: to combine presets, list them: '+{group}=[{','.join(given)}]'"
    ambiguous = re.search(r"Ambiguous value for argument '([^'=]+)=([^']*)'", text)
    if ambiguous:  # a comma outside brackets: Hydra's sweep syntax, which a single run does not take
        key, value = ambiguous.groups()
        return (f"{key}={value}: a comma outside brackets is Hydra's sweep syntax; write a list as "
                f"{key}=[{value}], or text in quotes: '{key}=\"{value}\"'")
    merging = re.search(r"Error merging override (([^=]+)=.*)", text)
    if merging and "Cannot merge DictConfig with" in str(exc.__cause__ or ""):  # search.grid=[]
        key = merging.group(2)
        return f"{merging.group(1)}: {key} is a mapping of keys; set them one by one ({key}.KEY=…)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(exc, OverrideParseException):
        return _unparsable(exc.override, lines)
    return " ".join(lines[:2]) if lines else type(exc).__name__


def _group_and_option(path: str, overrides: Sequence[str]) -> tuple[str, str]:
    """The group and option of the config Hydra could not find at `path` ("baseline/NAME"), as the
    user typed them: an option may hold slashes (a file's path), and a group too (hydra/launcher)."""
    for override in overrides:
        key, equals, value = override.lstrip("+").partition("=")
        if equals and path == f"{key}/{value}":
            return key, value
    group, _, option = path.rpartition("/")
    return group, option


def _unparsable(override: str, lines: list[str]) -> str:
    """An override Hydra's grammar refused: the override and why, and where quotes would help, the
    override quoted (the grammar takes ~, ], ) and some other characters in a value only inside quotes)."""
    reasons = [line for line in lines if not line.startswith(("Error parsing override", "See https://"))]
    reason = reasons[0] if reasons else "not an override"
    key, equals, value = override.partition("=")
    if (equals and re.fullmatch(r"[+~]{0,2}[\w.@/-]+", key) and not set("'\"") & set(value)
            and reason.startswith(("LexerNoViableAltException", "mismatched input", "extraneous input"))):
        return f"{override}: Hydra cannot parse this value; put it in quotes: '{key}=\"{value}\"'"
    if reason.startswith("LexerNoViableAltException"):  # its message repeats the override
        reason = "a character its grammar takes only inside quotes"
    return f"{override}: Hydra cannot parse it ({reason})"


def _yaml_error(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is None:
        return f"a config file is not valid YAML: {problem}"
    return f"{mark.name}: not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def available_options(group: str) -> list[str]:
    folder = CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def options_on_search_path(command: str, overrides: list[str], groups: list[str]) -> dict[str, list[str]]:
    """Each group's options as Hydra finds them with `overrides`: effscale's own and those of config
    folders put on `hydra.searchpath` (a baseline or sweep preset of the user's own)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=command):
            loader = GlobalHydra.instance().config_loader()
            return {group: sorted(set(loader.get_group_options(group, config_name=command, overrides=overrides)))
                    for group in groups}
    finally:
        GlobalHydra.instance().clear()


def load(command: str, overrides: list[str]) -> dict[str, Any]:
    """The resolved config of `command` with `overrides`, every value checked (effscale/checks.py)."""
    return checked(to_dict(compose(command, overrides)))


def checked(cfg: dict[str, Any]) -> dict[str, Any]:
    """A resolved config with every value checked, and `out` with `~` as the home folder (Hydra asks
    for a value that starts with it to be quoted, out="~/runs", and then leaves it as it is)."""
    from effscale.checks import check_config

    check_config(cfg)
    if isinstance(cfg.get("out"), str):
        cfg["out"] = os.path.expanduser(cfg["out"])
    return cfg


def to_dict(cfg: Any) -> Any:
    """A resolved plain-Python copy of a config node (dicts and lists); an interpolation that cannot
    be resolved (`${oc.env:VAR}` of an unset variable, a key that is not there) is a UserError naming it."""
    from omegaconf.errors import InterpolationResolutionError

    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        try:
            return OmegaConf.to_container(cfg, resolve=True)
        except InterpolationResolutionError as exc:
            why = str(exc.msg).splitlines()[0].removeprefix("KeyError raised while resolving interpolation: ")
            raise UserError(f"{exc.full_key}: " + why.strip('"')) from None
    return cfg


def model_table(cfg: dict[str, Any], variant: str | None = None) -> dict[str, Any]:
    """The scaled stage table a composed config describes. The data set names the baseline's input
    size (`data.resolution`, e.g. 32 px for CIFAR-sized data); scaling multiplies it."""
    baseline = dict(cfg["baseline"])
    data = cfg.get("data") or {}
    if data.get("resolution"):
        baseline["resolution"] = int(data["resolution"])
    try:
        return scaled_baseline(baseline, cfg.get("scale"), variant if variant is not None else cfg.get("variant"))
    except ScalingError as exc:
        raise UserError(str(exc)) from None
