"""Check a box configuration on the clinic side without touching the clinic's own files.

The box's schema (:func:`appliance.protocol.boxconfig.validate_config`, the protocol layer's) is what a box checks
a configuration with, and there a path in the config names the box's files, some of which the box then reads (the
pinned update key). On the console host a path must never lead to reading whatever file an operator (or anyone
who gets a config into the editor) names, without bound (``/dev/zero``), nor to an error that tells whether that
path exists here.

:func:`validate_offline` runs the same validator on a copy in which every path-valued key has been
checked for form only (a string of printable characters, at most :data:`MAX_PATH_CHARS`) and
then neutralised, so nothing on this host is opened because a config names it. Whether the file exists
and holds the right thing is for the box to say when it applies the config (it reports ``config_rejected``).
"""
from __future__ import annotations

import re
from typing import Any

from appliance.protocol.boxconfig import BoxConfig, ConfigError, describe_keys, validate_config

#: Longest path accepted in a config, characters (Linux PATH_MAX).
MAX_PATH_CHARS = 4096
#: A key names a file or folder on the box when its name ends like this.
_PATH_KEY_RE = re.compile(r"(^|_)(file|dir|path)$|^tls_(ca|cert|key)$")
#: Keys whose file the box's validator reads: neutralised to "" (unset), so nothing is read at all.
_READ_BY_VALIDATOR = frozenset({"updates.public_key_file"})
#: What other non-empty paths become for the check: the validator only tests that they are set (e.g. a
#: client certificate needs its key); a fixed name in a folder that does not exist, never the operator's.
_PLACEHOLDER = "/nonexistent/bedtime-console-placeholder"


def path_keys() -> tuple[str, ...]:
    """Dotted names of the configuration keys that hold a path on the box (from the box's own schema)."""
    return tuple(k for k, default, _ in describe_keys()
                 if isinstance(default, str) and _PATH_KEY_RE.search(k.rsplit(".", 1)[-1]))


def _check_path_form(key: str, value: str) -> None:
    if len(value) > MAX_PATH_CHARS:
        raise ConfigError(key, f"path longer than {MAX_PATH_CHARS} characters")
    if not value.isprintable():
        raise ConfigError(key, "path holds control characters")


def validate_offline(doc: Any) -> BoxConfig:
    """Validate ``doc`` as the box would, except that no path it names is opened or looked up here.

    Parameters
    ----------
    doc : object
        A parsed configuration document (JSON object or TOML table).

    Returns
    -------
    BoxConfig
        The typed configuration of the neutralised copy (paths replaced, see the module docstring).

    Raises
    ------
    ConfigError
        For anything the box's schema refuses, and for a path that is not printable or longer than
        :data:`MAX_PATH_CHARS` characters. The message never depends on this host's files.
    """
    if not isinstance(doc, dict):
        return validate_config(doc)  # refuses it by type, before any file could be named
    neutral = dict(doc)
    for dotted in path_keys():
        section, key = dotted.split(".", 1)
        table = neutral.get(section)
        if not isinstance(table, dict) or key not in table:
            continue
        value = table[key]
        if not isinstance(value, str):
            continue  # the schema refuses the type itself
        _check_path_form(dotted, value)
        if value:
            neutral[section] = {**table, key: "" if dotted in _READ_BY_VALIDATOR else _PLACEHOLDER}
    return validate_config(neutral)
