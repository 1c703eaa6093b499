"""``seer export``: a run folder as one standard Hugging Face model folder, adapter merged."""

from __future__ import annotations

from dataclasses import dataclass

from seer.core.fields import option

__all__ = ["HELP", "NAME", "ExportConfig", "main"]

NAME = "export"
HELP = "write a merged Hugging Face model folder plus the prototypes"


@dataclass
class ExportConfig:
    run: str = option(help="run folder written by seer train")
    out: str = option(help="output folder")
    overwrite: bool = option(False, "replace an existing output folder that seer wrote")


Config = ExportConfig


def main(config: ExportConfig, *, progress: bool = True) -> int:
    from seer.inference.export import export  # deferred: torch and transformers

    out = export(config.run, config.out, overwrite=config.overwrite)
    print(f"merged model written to {out}")
    return 0
