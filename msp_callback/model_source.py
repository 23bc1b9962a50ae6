"""Whether a model source can be loaded, found out before its weights are: a packaged name, a
local folder or a hub id that exists, whose ``config.json`` transformers can build a model from.
Every failure is one line naming the source, and for a config.json that parses but holds invalid
values, the file and the field."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, suggest
from .packaged import PACKAGED_MODELS

_FIELD_IN_MESSAGE = re.compile(r"field '(\w+)'")
_NOT_FIELDS = ("architectures", "transformers_version")  # what the model built from a config does not depend on


def check_model_source(name: str, option: str = "--model") -> None:
    """A packaged name, or a local folder or hub id whose config.json builds a model (see
    `check_model_config`); ``option`` is how the user gave it, for the messages."""
    if name in PACKAGED_MODELS:
        return
    packaged = ", ".join(PACKAGED_MODELS)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{option} {name}: is a file; give a model folder (with config.json), a packaged name "
                              f"({packaged}) or a hub id")
        config = path / "config.json"
        if not config.is_file():
            raise ConfigError(f"{option} {name}: the folder has no config.json, so it is not a transformers model folder")
        try:
            raw = json.loads(config.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise ConfigError(f"{option} {name}: config.json is not valid JSON ({error})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{option} {config}: holds {type(raw).__name__}, not a mapping of settings")
        check_model_config(option, str(path), raw)
        return
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, not a hub id (org/name)
        raise ConfigError(f"{option} {name}: not found (no such folder); give a model folder, a packaged name "
                          f"({packaged}) or a hub id (org/name)")
    check_model_config(option, name)


def _not_found(option: str, name: str, error: Exception) -> ConfigError:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ConfigError(f"{option} {name}: not found: no such folder, not a packaged name "
                       f"({', '.join(PACKAGED_MODELS)}), and no hub model of that id could be read ({first})")


def check_model_config(option: str, source: str, raw: dict[str, Any] | None = None) -> None:
    """Build ``source``'s config, and its model on the meta device (no memory, no weights). A
    config transformers refuses is named with its file and, where one value is at fault, the field;
    a model that cannot be built is refused when one field is found at fault (else the load goes
    on and shows what happens). ``raw``: the parsed config.json of a local folder."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    where = f"{option} {Path(source) / 'config.json'}" if raw is not None else f"{option} {source} (config.json)"
    if raw is not None and "model_type" not in raw:
        raise ConfigError(f"{where}: field 'model_type' is missing, so transformers cannot tell the architecture "
                          "(e.g. \"model_type\": \"llama\")")
    if raw is not None and raw["model_type"] not in CONFIG_MAPPING:
        raise ConfigError(f"{where}: field 'model_type' = {raw['model_type']!r} is not an architecture this transformers "
                          f"knows{suggest(str(raw['model_type']), CONFIG_MAPPING.keys())}")
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as error:
        if raw is None:
            raise _not_found(option, source, error) from None
        raise ConfigError(f"{where}: cannot be read ({_first_line(error)})") from None
    except ValueError as error:  # an id the hub refuses as a name, or a config transformers refuses
        if raw is None and "repo id" in str(error).lower():
            raise _not_found(option, source, error) from None
        raise ConfigError(f"{where}: {_at_fault(error, raw)}") from None
    except Exception as error:  # transformers' own validation: a value of the wrong type, or values that disagree
        raise ConfigError(f"{where}: {_at_fault(error, raw)}") from None
    try:
        _build_on_meta(config)
    except Exception as error:
        field = _field_at_fault(raw, build=True) if raw is not None else None
        if field is not None:
            raise ConfigError(f"{where}: field {field!r} = {raw[field]!r} cannot build the model "
                              f"({_first_line(error)}): fix or remove it") from None


def _build_on_meta(config: Any) -> None:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        AutoModelForCausalLM.from_config(config)


def _first_line(error: Exception) -> str:
    """What went wrong, in one line (for a validation error "...for field 'x':", the line after)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return lines[1]
    return lines[0] if lines else type(error).__name__


def _at_fault(error: Exception, raw: dict[str, Any] | None) -> str:
    """The field at fault and why, as one clause."""
    named = _FIELD_IN_MESSAGE.search(str(error))
    field = named.group(1) if named else (_field_at_fault(raw, build=False) if raw is not None else None)
    why = _first_line(error)
    if field is None or raw is None or field not in raw:
        return f"transformers cannot read it ({why})" + (f"; field {field!r}" if field else "")
    return f"field {field!r} = {raw[field]!r} is invalid ({why}): fix or remove it"


def _field_at_fault(raw: dict[str, Any], build: bool) -> str | None:
    """The first field of ``raw`` whose removal (its class default instead) makes the config
    load, and with ``build`` also the model build; None when no single field does."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if raw.get("model_type") not in CONFIG_MAPPING:  # (a lazy mapping: its .get does not load the classes)
        return None
    config_class = CONFIG_MAPPING[raw["model_type"]]
    for key in raw:
        if key == "model_type" or key in _NOT_FIELDS:
            continue
        try:
            config = config_class.from_dict({k: v for k, v in raw.items() if k != key})
            if build:
                _build_on_meta(config)
        except Exception:
            continue
        return key
    return None
