"""What kind of readout a run holds, as recorded in its ``seer.json`` (``"readout": {"kind",
"version"}``). A new kind of readout is added here: its name, and the check that refuses a run
this seer cannot read. A run written before the field existed holds the first kind."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from seer.errors import SeerError

__all__ = ["KIND", "KINDS", "VERSION", "readout_kind", "record"]

#: Cosine to per-concept prototypes, ``softmax(cos / T)``, ``none`` below a threshold.
KIND = "prototypes"
VERSION = 1
#: Every kind this seer reads, with the newest version of each it understands.
KINDS = {KIND: VERSION}


def record() -> dict[str, Any]:
    """The ``seer.json`` entry of a readout fitted now."""
    return {"kind": KIND, "version": VERSION}


def readout_kind(meta: Mapping[str, Any], where: object = "this run") -> str:
    """The readout kind of a run's ``seer.json`` contents (``prototypes`` when it has no
    ``readout`` entry: written before there was one), refusing kinds and versions this seer
    does not know."""
    entry = meta.get("readout", {"kind": KIND, "version": 1})
    if not isinstance(entry, Mapping):
        raise SeerError(f"{where}: 'readout' in seer.json is not an object; train the run again")
    kind, version = entry.get("kind"), entry.get("version", 1)
    if kind not in KINDS or not isinstance(version, int) or version > KINDS[str(kind)]:
        raise SeerError(
            f"{where} holds a readout of kind {kind!r} version {version!r}; this seer reads "
            f"{KINDS}: upgrade seer (pip install -U seer)"
        )
    return str(kind)
