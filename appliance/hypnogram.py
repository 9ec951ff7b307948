"""Sleep stages and the hypnogram files the project reads.

A hypnogram here is a 1-D ``numpy.int8`` array, one value per 30-s epoch, using the
YASA / AASM integer convention below. Every module that speaks of stages uses :class:`Stage`.

Three on-disk formats are read (see ``../shared/README.md``):

* Sleep-EDF Expanded text exports: one R&K letter per line (``W 1 2 3 4 R ?``), CR line ends;
  R&K stages 3 and 4 merge into N3 (AASM).
* YASA text files: ``#`` comment lines, then one value per line, either ``0..4`` or ``W N1 N2 N3 R``; a file of
  numbers only, with no header, is read this way too (4 = REM).
* DREAMS hypnograms: a ``[Hypnogram]`` header, then one code per 5 s
  (5=W 4=REM 3=S1 2=S2 1=S3 0=S4, -1=movement, -2/-3=unknown).
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np

from appliance.protocol.commands import short_repr
from appliance.protocol.stages import EPOCH_S, Stage
from appliance.protocol.userfiles import UserFileError, read_small_regular_file

logger = logging.getLogger(__name__)


_LETTER_TO_STAGE = {
    "W": Stage.W, "0": Stage.W,
    "1": Stage.N1, "N1": Stage.N1, "S1": Stage.N1,
    "2": Stage.N2, "N2": Stage.N2, "S2": Stage.N2,
    "3": Stage.N3, "4": Stage.N3, "N3": Stage.N3, "S3": Stage.N3, "S4": Stage.N3,
    "R": Stage.REM, "REM": Stage.REM,
    "?": Stage.UNSCORED, "M": Stage.UNSCORED,
}

# YASA numbers stages 0=W 1=N1 2=N2 3=N3 4=REM (unlike R&K, where "4" is deep sleep).
_YASA_TO_STAGE = {**_LETTER_TO_STAGE, "3": Stage.N3, "4": Stage.REM, "-1": Stage.UNSCORED}

# DREAMS 5-s codes (database README): 5=W 4=REM 3=S1 2=S2 1=S3 0=S4 -1=movement -2/-3=unknown.
_DREAMS_CODE_TO_STAGE = {5: Stage.W, 4: Stage.REM, 3: Stage.N1, 2: Stage.N2, 1: Stage.N3, 0: Stage.N3}
DREAMS_CODE_S = 5.0
"""Seconds covered by one DREAMS hypnogram code."""


def shared_dir() -> Path | None:
    """The read-only ``shared/`` folder beside the project checkout, or None when absent.

    ``$BEDTIME_SHARED``, when set, is the only place looked at (so ``BEDTIME_SHARED=/none make test`` shows what
    a checkout without the data does); otherwise ``../shared`` relative to the repository root.
    """
    import os

    env = os.environ.get("BEDTIME_SHARED")
    candidates = [Path(env)] if env else [Path(__file__).resolve().parent.parent.parent / "shared"]
    for c in candidates:
        if c.is_dir():
            return c
    return None


def read_sleep_edf_txt(path: str | Path) -> np.ndarray:
    """Read a Sleep-EDF text hypnogram (R&K letters, one per line, any line ending).

    Returns
    -------
    numpy.ndarray of int8, one :class:`Stage` per 30-s epoch (R&K 3 and 4 become N3, ``?`` -> UNSCORED).
    """
    text = _read_text(Path(path))
    tokens = text.replace("\r", "\n").split()
    return _tokens_to_stages(tokens, path)


def read_yasa_txt(path: str | Path) -> np.ndarray:
    """Read a YASA-style hypnogram text file (``#`` comments; ``0..4`` or stage names per line)."""
    tokens = [ln.strip() for ln in _read_text(Path(path)).replace("\r", "\n").splitlines()]
    tokens = [t for t in tokens if t and not t.startswith("#")]
    return _tokens_to_stages(tokens, path, table=_YASA_TO_STAGE)


def _tokens_to_stages(tokens: list[str], path: str | Path, *, table: dict[str, Stage] | None = None) -> np.ndarray:
    table = _LETTER_TO_STAGE if table is None else table
    out = np.empty(len(tokens), dtype=np.int8)
    for i, tok in enumerate(tokens):
        try:
            out[i] = table[tok.upper()]
        except KeyError:
            raise ValueError(f"{path}: line {i + 1}: unknown stage label {short_repr(tok, 40)}") from None
    return out


def read_dreams_codes(path: str | Path) -> np.ndarray:
    """Read a DREAMS hypnogram: the raw 5-s codes as ``int8`` (header line skipped)."""
    lines = _read_text(Path(path)).replace("\r", "\n").split()
    if lines and lines[0].startswith("["):
        lines = lines[1:]
    codes = []
    for i, x in enumerate(lines):
        try:
            value = float(x)  # some exports write "5.0"
        except ValueError:
            value = float("nan")
        if not (value.is_integer() and -3 <= value <= 5):
            raise ValueError(f"{path}: code {i + 1}: {x!r} is not a DREAMS stage code (an integer -3..5)")
        codes.append(int(value))
    return np.array(codes, dtype=np.int8)


def dreams_codes_to_stages(codes: np.ndarray) -> np.ndarray:
    """Map DREAMS 5-s codes to :class:`Stage` values (movement and unknown -> UNSCORED)."""
    out = np.full(len(codes), Stage.UNSCORED, dtype=np.int8)
    for code, stage in _DREAMS_CODE_TO_STAGE.items():
        out[codes == code] = stage
    return out


def dreams_to_epochs(codes: np.ndarray, *, epoch_s: float = EPOCH_S) -> tuple[np.ndarray, np.ndarray]:
    """Score 30-s epochs from DREAMS 5-s codes.

    DREAMS was scored in 20-s epochs and is coded every 5 s, so one 30-s epoch can mix two stages.

    Returns
    -------
    majority : numpy.ndarray of int8
        The majority stage of each full epoch (UNSCORED when the majority is unscored).
    unanimous : numpy.ndarray of bool
        True where all 5-s labels inside the epoch agree and are scored.
    """
    per = int(round(epoch_s / DREAMS_CODE_S))
    stages = dreams_codes_to_stages(codes)
    n = len(stages) // per
    majority = np.full(n, Stage.UNSCORED, dtype=np.int8)
    unanimous = np.zeros(n, dtype=bool)
    for i in range(n):
        chunk = stages[i * per:(i + 1) * per]
        stage, count = Counter(chunk.tolist()).most_common(1)[0]
        majority[i] = stage
        unanimous[i] = count == per and stage != Stage.UNSCORED
    return majority, unanimous


def read_hypnogram(path: str | Path) -> np.ndarray:
    """Read any of the 30-s hypnogram formats above, choosing by content.

    Raises
    ------
    OSError
        When the file cannot be read.
    ValueError
        When it is not text (UTF-8) or not a hypnogram of any known format; the message names the file and,
        where it can, the line.
    """
    p = Path(path)
    text = _read_text(p)
    head = text[:200]
    if head.lstrip().startswith("[Hypnogram]"):
        majority, _ = dreams_to_epochs(read_dreams_codes(p))
        return majority
    # Digits only (no W, R or ?) cannot be a Sleep-EDF export, whose every night has W and R letters: it is
    # the YASA numbering, 4 = REM. (Read as R&K, 4 = deep sleep, a typed 0-4 night lost its REM unnoticed.)
    if head.lstrip().startswith("#") or re.search(r"^(N1|N2|N3)\s*$", text, re.M) or \
            re.fullmatch(r"[\s0-9-]*", text):
        return read_yasa_txt(p)
    return read_sleep_edf_txt(p)


MAX_HYPNOGRAM_FILE_BYTES = 4 * 1024 * 1024
"""Largest hypnogram file read: the longest in ``../shared`` is 16 KB (a night of 30-s epochs in words); a bigger
file is the wrong one, refused rather than read."""


def _read_text(path: Path) -> str:
    """A hypnogram file's text; a file that is not UTF-8 (a binary file given by mistake), not a regular file (a
    FIFO, which would be waited on for ever, or a device) or larger than :data:`MAX_HYPNOGRAM_FILE_BYTES` is a
    ValueError; one that cannot be opened an OSError."""
    try:
        data = read_small_regular_file(path, max_bytes=MAX_HYPNOGRAM_FILE_BYTES)
    except UserFileError as e:
        raise ValueError(f"{path}: {e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text hypnogram (byte 0x{data[e.start]:02x} at offset {e.start} "
                         f"is not UTF-8)") from None


def real_hypnograms() -> dict[str, np.ndarray]:
    """All whole-night real expert hypnograms in ``shared/`` (Sleep-EDF + YASA), by name.

    Returns an empty dict (and logs a warning) when ``shared/`` is absent.
    """
    root = shared_dir()
    if root is None:
        logger.warning("shared/ not found: no real hypnograms available")
        return {}
    out: dict[str, np.ndarray] = {}
    for p in sorted((root / "data/hypnograms/sleep-edf-sc").glob("*.txt")):
        out[p.stem] = read_sleep_edf_txt(p)
    for p in sorted((root / "data/hypnograms/yasa").glob("*.txt")):
        out[p.stem] = read_yasa_txt(p)
    return out


def subject_of(name: str) -> str:
    """Subject id of a hypnogram name, for subject-wise splits (Sleep-EDF ``SC4ssN``: ss = subject)."""
    if name.startswith("SC4") and len(name) >= 5:
        return "sleep-edf-" + name[3:5]
    return name
