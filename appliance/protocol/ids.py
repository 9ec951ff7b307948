"""The one rule for a box id, shared by the box's configuration, the MQTT schema, signed manifests and the console.

A box id becomes an MQTT topic level (``bedtime/v1/<box_id>/...``), a broker username in the ACL and a name in a
signed manifest's audience, so it is limited to characters that are never MQTT wildcards or separators, nor
anything a shell, a URL path or a file name would read differently.
"""
from __future__ import annotations

import re

BOX_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
"""1 to 64 ASCII letters, digits, ``_``, ``.`` or ``-``, starting with a letter or digit."""

BOX_ID_RULE = "1 to 64 ASCII letters, digits, '_', '.' or '-', starting with a letter or digit"
"""The rule in words, for one-line error messages."""


def is_box_id(value: object) -> bool:
    """Whether ``value`` is a valid box id.

    Parameters
    ----------
    value : object
        Anything; only a ``str`` following :data:`BOX_ID_RE` passes.

    Returns
    -------
    bool
        True when ``value`` is a usable box id.
    """
    return isinstance(value, str) and BOX_ID_RE.match(value) is not None
