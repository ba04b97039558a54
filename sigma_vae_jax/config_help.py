"""The fields of a config as `--help` and `--print_config` list them: one line per
field with its value and a few words of meaning.

The meanings are the comments above each field in the sources that define the
defaults (`default_config.py` and the model's module in `models/`), so the listing
never drifts from the documentation in the code. Imports only the standard library
(the config itself is loaded by the caller).
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Optional

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Source files whose `VAR.FIELD = ...` assignments document the default config:
# (path, the variable, the dotted prefix of its fields).
_DEFAULTS_SOURCE = (os.path.join(_PACKAGE_DIR, "default_config.py"), "config", "")
_ASSIGNMENT = re.compile(r"^\s*(\w+)((?:\.\w+)+)\s*=(?!=)")
_MEANING_WIDTH = 80


def field_docs(source_path: str, variable: str, prefix: str = "") -> dict[str, str]:
  """{dotted field: its comment} from the assignments `VARIABLE.a.b = ...` of a
  source file: the comment lines right above (else the comment on the line itself)."""
  docs: dict[str, str] = {}
  try:
    with open(source_path) as f:
      lines = f.read().splitlines()
  except OSError:
    return docs
  comment: list[str] = []
  for line in lines:
    stripped = line.strip()
    if stripped.startswith("#"):
      comment.append(stripped.lstrip("#").strip())
      continue
    match = _ASSIGNMENT.match(line)
    if match and match.group(1) == variable:
      inline = line.split("  # ", 1)[1].strip() if "  # " in line else ""
      text = " ".join(comment) or inline
      if text:
        docs.setdefault(prefix + match.group(2)[1:], text)
    comment = []
  return docs


def default_docs(model_name: Optional[str] = None,
                 config_path: Optional[str] = None) -> dict[str, str]:
  """The meaning of every documented field: the defaults (default_config.py), the
  model's own section (models/<model_name>.py) and, for fields neither documents,
  the comments of the config file at `config_path`."""
  docs = field_docs(*_DEFAULTS_SOURCE)
  if model_name and re.fullmatch(r"\w+", model_name):
    model_docs = field_docs(os.path.join(_PACKAGE_DIR, "models", f"{model_name}.py"),
                            "model", "model.")
    docs.update(model_docs)  # the model's own meaning of e.g. model.dtype
  if config_path:
    for name, text in field_docs(config_path, "config").items():
      docs.setdefault(name, text)
  return docs


def short_meaning(text: str, width: int = _MEANING_WIDTH) -> str:
  """The first sentence of a comment (a period outside parentheses followed by a
  capital), cut to `width` characters."""
  depth = 0
  for i, ch in enumerate(text):
    depth += (ch == "(") - (ch == ")")
    if (ch == "." and depth == 0 and i + 2 < len(text) and text[i + 1] == " "
        and text[i + 2].isupper()):
      text = text[:i + 1]
      break
  if len(text) <= width:
    return text
  return text[:width - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{dotted field: value} of a (nested) config dict, in definition order."""
  out = {}
  for key, value in config.items():
    if hasattr(value, "items"):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def fields_listing(config, docs: Mapping[str, str], indent: str = "  ") -> str:
  """One line per field: `NAME = VALUE  meaning` (values as Python literals)."""
  values = flatten(config.to_dict() if hasattr(config, "to_dict") else config)
  left = {name: f"{name} = {value!r}" for name, value in values.items()}
  column = min(max(len(text) for text in left.values()), 46) + 2
  lines = []
  for name, text in left.items():
    group = name.rsplit(".", 1)[0]
    # A section's `name` (e.g. model.name) is documented by the section's comment.
    doc = docs.get(name) or (docs.get(group, "") if name.endswith(".name") else "")
    meaning = short_meaning(doc)
    lines.append((f"{indent}{text.ljust(column)}{meaning}" if meaning
                  else f"{indent}{text}").rstrip())
  return "\n".join(lines)


def model_name_of(config) -> Optional[str]:
  try:
    return str(config["model"]["name"])
  except (KeyError, TypeError):
    return None
