"""YAML + argparse configuration.

``parse_args(parser)`` reads ``--config FILE.yaml`` first; its values become the parser's defaults, so any flag given
on the command line still wins. YAML keys may be written like the flags (``batch-size``) or like their destinations
(``batch_size``). An unknown key or a value of the wrong type is an error that names the key (and, for an unknown key,
the nearest valid flag). ``save_resolved_config`` writes the final values to ``<output-dir>/config.yaml`` so every run
can be repeated with ``--config <output-dir>/config.yaml``; ``--print-config`` (added to every parser here) prints the
same YAML and stops. ``ArgumentParser`` reports a bad flag or value as one line ``error: ...`` (exit status 2).
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

CONFIG_FILE_NAME = "config.yaml"


# flags that steer this invocation only: never read from a YAML file, never written to config.yaml
RUN_ONLY_KEYS = ("config", "print_config", "debug")


class ConfigError(ValueError):
    """A config file that cannot be applied to the parser (unknown key, wrong type, unreadable YAML)."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line ``error: <message>`` and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {message} (run with --help to list the flags)\n")
        sys.exit(2)


def _option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Map every accepted YAML key spelling (dest, long flag with/without dashes) to its action."""
    table: dict[str, argparse.Action] = {}
    for action in parser._actions:  # argparse has no public accessor for the registered actions
        if isinstance(action, argparse._HelpAction) or action.dest in (argparse.SUPPRESS, *RUN_ONLY_KEYS):
            continue
        table[action.dest] = action
        for opt in action.option_strings:
            if opt.startswith("--"):
                table[opt[2:].replace("-", "_")] = action
    return table


def _flag_name(action: argparse.Action) -> str:
    longs = [o for o in action.option_strings if o.startswith("--")]
    return longs[0] if longs else (action.option_strings[0] if action.option_strings else action.dest)


def _convert_scalar(key: str, value: Any, action: argparse.Action) -> Any:
    if value is None:
        return None
    kind = action.type
    if kind is None:
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"config key '{key}': expected an integer for {_flag_name(action)}, got {value!r}")
    if kind is float and isinstance(value, bool):
        raise ConfigError(f"config key '{key}': expected a number for {_flag_name(action)}, got {value!r}")
    if isinstance(value, (list, dict)):
        raise ConfigError(f"config key '{key}': expected a single value for {_flag_name(action)}, got {value!r}")
    try:
        # YAML 1.1 reads "1e-3" as a string; the flag's own type converts it like the command line would.
        return kind(value) if isinstance(value, str) or kind in (int, float) else kind(str(value))
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        name = getattr(kind, "__name__", str(kind))
        flag = _flag_name(action)
        raise ConfigError(f"config key '{key}': cannot convert {value!r} to {name} for {flag}: {exc}") from exc


def _convert_value(key: str, value: Any, action: argparse.Action) -> Any:
    """Check/convert one YAML value the way argparse would treat the same value on the command line."""
    flag = _flag_name(action)
    if action.nargs == 0:  # store_true / store_false / store_const / BooleanOptionalAction
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
            if not isinstance(value, bool):
                raise ConfigError(f"config key '{key}': {flag} is a switch; write true or false, not {value!r}")
            if isinstance(action, argparse._StoreFalseAction) and key.replace("-", "_") != action.dest:
                return not value  # 'no-foo: true' sets dest foo to False
            return value
        return value
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        if value is None:
            return None
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if isinstance(action.nargs, int) and len(items) != action.nargs:
            raise ConfigError(f"config key '{key}': {flag} takes {action.nargs} values, got {len(items)}: {value!r}")
        if action.nargs == "+" and not items and action.default:  # an empty default (e.g. []) round-trips
            raise ConfigError(f"config key '{key}': {flag} needs at least one value")
        converted = [_convert_scalar(key, v, action) for v in items]
        for v in converted:
            _check_choice(key, v, action)
        return converted
    if action.nargs == "?" or action.nargs is None:
        converted = _convert_scalar(key, value, action)
        _check_choice(key, converted, action)
        return converted
    return value


def _check_choice(key: str, value: Any, action: argparse.Action) -> None:
    if action.choices is not None and value is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ConfigError(f"config key '{key}': {value!r} is not one of {choices} ({_flag_name(action)})")


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of flag names to values, got {type(data).__name__}")
    return data


def apply_config(parser: argparse.ArgumentParser, config: dict[str, Any], source: str = "config") -> None:
    """Set the parser's defaults from a config mapping, validating every key and value."""
    table = _option_actions(parser)
    defaults: dict[str, Any] = {}
    for raw_key, value in config.items():
        key = str(raw_key).replace("-", "_").lstrip("_")
        action = table.get(key)
        if action is None:
            valid = sorted({_flag_name(a) for a in table.values()})
            nearest = difflib.get_close_matches("--" + key.replace("_", "-"), valid, n=1, cutoff=0.5)
            hint = f"; did you mean {nearest[0]}?" if nearest else "; run with --help to list the valid flags"
            raise ConfigError(f"unknown key '{raw_key}' in {source}{hint}")
        defaults[action.dest] = _convert_value(str(raw_key), value, action)
        action.required = False  # a value from the file satisfies a required flag
    parser.set_defaults(**defaults)


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--print-config`` and ``--debug`` (once per parser)."""
    if any("--config" in a.option_strings for a in parser._actions):
        return
    parser.add_argument("--config", default=None, metavar="FILE.yaml",
                        help="YAML file of flag values (keys like 'batch-size' or 'batch_size'); flags override it")
    parser.add_argument("--print-config", action="store_true",
                        help="check every flag and config value, print the resolved configuration as YAML (what "
                             "<output-dir>/config.yaml gets) and exit without reading data or building a model")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a known error instead of one 'error:' line (or LAVILA_DEBUG=1)")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with ``--config FILE.yaml`` values as defaults; explicit flags override the file."""
    add_run_flags(parser)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        try:
            apply_config(parser, load_config_file(known.config), source=str(known.config))
        except ConfigError as exc:
            parser.error(str(exc))
    return parser.parse_args(argv)


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def resolved_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run's flag values as plain YAML/JSON types (what checkpoints store as ``args``)."""
    return {k: _plain(v) for k, v in sorted(vars(args).items()) if k not in RUN_ONLY_KEYS}


def config_yaml(args: argparse.Namespace) -> str:
    """:func:`resolved_config` as the YAML text of ``config.yaml`` (and of ``--print-config``)."""
    return yaml.safe_dump(resolved_config(args), sort_keys=True, default_flow_style=False)


def save_resolved_config(args: argparse.Namespace, output_dir: str | os.PathLike) -> Path | None:
    """Write ``<output_dir>/config.yaml`` on rank 0 (no-op elsewhere); returns the path written."""
    from lavila.utils.distributed import is_main_process

    if not is_main_process():
        return None
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / CONFIG_FILE_NAME
    tmp = path.with_name(f".{CONFIG_FILE_NAME}.tmp.{os.getpid()}")
    tmp.write_text(config_yaml(args))
    os.replace(tmp, path)
    return path
