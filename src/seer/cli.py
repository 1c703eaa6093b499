"""The ``seer`` command. Each subcommand is a thin ``main`` over the library.

Errors a user can fix print one line and exit with status 2; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from seer.errors import SeerError
from seer.training.config import TrainConfig

__all__ = ["main"]

_TYPES = {
    "int": int,
    "int | None": int,
    "float": float,
    "float | None": float,
    "str": str,
    "str | None": str,
}


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per TrainConfig field, with the field's help."""
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        kw = {
            "help": f"{f.metadata.get('help', '')} (default: {default})",
            "default": argparse.SUPPRESS,
        }
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif f.type.startswith("tuple[float"):
            parser.add_argument(flag, type=float, nargs=3, **kw)
        elif f.type.startswith("tuple"):
            parser.add_argument(flag, nargs="+", **kw)
        else:
            parser.add_argument(flag, type=_TYPES[f.type], **kw)


def _cmd_train(args: argparse.Namespace) -> int:
    from seer.training.train import train

    known = {f.name for f in fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in known})
    out = train(config, progress=not args.quiet)
    print(f"run written to {out}")
    print(f"next: seer evaluate {out}")
    return 0


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from seer.evaluation.evaluate import evaluate

    metrics = evaluate(
        args.run,
        sweep=not args.no_sweep,
        figures=not args.no_figures,
        n_generations=args.generations,
        progress=not args.quiet,
    )
    keys = (
        "prototype_accuracy",
        "macro_f1",
        "probe_accuracy",
        "silhouette",
        "davies_bouldin",
        "intra_cos",
        "inter_cos",
    )
    print(f"{'held-out metric':<22}{'base':>10}{'SEER':>10}")
    for key in keys:
        print(f"{key:<22}{_fmt(metrics['base'][key]):>10}{_fmt(metrics['seer'][key]):>10}")
    print(
        f"{'ot_mean_ratio':<22}{_fmt(metrics['base']['ot']['mean_ratio']):>10}{_fmt(metrics['seer']['ot']['mean_ratio']):>10}"
    )
    r = metrics["retention"]
    print(
        f"general text: KL(base||SEER) = {r['kl_nats_per_token']:.4f} nats/token, "
        f"perplexity {r['ppl_base']:.2f} -> {r['ppl_seer']:.2f}"
    )
    out = Path(args.run) / "eval"
    print(f"metrics: {out / 'metrics.json'}")
    if not args.no_figures:
        print(f"report:  {out / 'report.md'}")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from seer.inference.explain import main as explain_main

    return explain_main(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from seer.inference.export import export

    out = export(args.run, args.out, overwrite=args.overwrite)
    print(f"merged model written to {out}")
    return 0


def _cmd_detox(args: argparse.Namespace) -> int:
    from seer.safety.detox import main as detox_main

    return detox_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seer", description="Make a language model explain itself (SEER)."
    )
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    common = argparse.ArgumentParser(add_help=False)  # the same flags after the subcommand
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    common.add_argument(
        "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser = sub.add_parser

    def add(name: str, **kw: object) -> argparse.ArgumentParser:
        return add_parser(name, parents=[common], **kw)

    p = add("train", help="fine-tune a model with SEER and write a run folder")
    _add_config_arguments(p)
    p.set_defaults(func=_cmd_train)

    p = add("evaluate", help="base vs SEER on the run's held-out split; writes DIR/eval/")
    p.add_argument("run", help="run folder written by seer train")
    p.add_argument("--no-sweep", action="store_true", help="skip the all-layer sweep (faster)")
    p.add_argument("--no-figures", action="store_true", help="skip the figures and report.md")
    p.add_argument("--generations", type=int, default=3, help="greedy samples shown side by side")
    p.set_defaults(func=_cmd_evaluate)

    p = add("explain", help="generate (or score) and read the model's self-explanation")
    p.add_argument("run", help="run folder (or folder written by seer export)")
    p.add_argument("--prompt", help="user prompt")
    p.add_argument("--response", help="score this response instead of generating one")
    p.add_argument("--file", help="JSONL with 'prompt' (and optional 'response') per line")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (1..4096)")
    p.add_argument(
        "--json", action="store_true", help="print JSON (one object per line for --file)"
    )
    p.add_argument("--trace", action="store_true", help="print the per-token concept trace")
    g = p.add_argument_group("monitor and intervene (generation only)")
    g.add_argument(
        "--monitor",
        choices=["stop", "steer", "watch"],
        help="watch --concept while generating and act when its probability reaches "
        "--threshold: stop (answer --refusal), steer (towards --towards), or watch (report)",
    )
    g.add_argument("--concept", help="the concept the monitor watches, e.g. unsafe")
    g.add_argument("--threshold", type=float, default=0.5, help="probability that triggers it")
    g.add_argument("--towards", help="steer: the concept to move towards, e.g. safe")
    g.add_argument(
        "--steer-scale",
        type=float,
        default=0.5,
        help="steer: multiple of the prompt's mean hidden-state norm",
    )
    g.add_argument(
        "--watch-tokens",
        type=int,
        default=None,
        help="watch only the prompt's end and this many generated tokens (0: before replying)",
    )
    g.add_argument(
        "--reply-end",
        action="store_true",
        help="decide once, on the finished reply's final explanation (stop or watch)",
    )
    g.add_argument("--refusal", help="stop: the reply given instead (default: a short refusal)")
    p.set_defaults(func=_cmd_explain)

    p = add("export", help="write a merged Hugging Face model folder plus the prototypes")
    p.add_argument("run", help="run folder")
    p.add_argument("out", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=_cmd_export)

    p = add("detox-eval", help="refusal / harm evaluation on BeaverTails and XSTest prompts")
    p.add_argument("run", help="run folder")
    p.add_argument(
        "--harmful", default="../shared/data/beavertails_harmful.csv", help="BT prompts CSV"
    )
    p.add_argument(
        "--xstest", default="../shared/data/xstest_v2_prompts.csv", help="XSTest prompts CSV"
    )
    p.add_argument(
        "--judge-data", default="../shared/data/beavertails_binary.csv", help="judge training CSV"
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="evaluate a seeded subset of this many prompts per set",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the subset")
    p.add_argument("--max-new-tokens", type=int, default=48, help="reply length")
    p.add_argument(
        "--monitor",
        choices=["off", "stop", "steer"],
        nargs="+",
        default=["off"],
        help="intervene when unsafe (several modes: one variant each per threshold)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        nargs="+",
        default=[0.5],
        help="unsafe probability that triggers the monitor; several values evaluate one variant "
        "each (stop: all from the one watched plain pass)",
    )
    p.add_argument(
        "--watch-tokens",
        type=int,
        default=None,
        help="watch only the prompt's end and this many generated tokens (0: decide before "
        "the reply starts; default: the whole reply)",
    )
    p.add_argument(
        "--reply-end",
        action="store_true",
        help="stop monitors decide once, on the finished reply's final explanation (read "
        "where training reads it), and hold the reply back; not with steer",
    )
    p.add_argument(
        "--steer-scale",
        type=float,
        default=0.5,
        help="steering strength: multiple of the prompt's mean hidden-state norm, along "
        "safe-minus-unsafe",
    )
    p.add_argument("--unsafe-concept", default="unsafe", help="the concept the monitor watches")
    p.add_argument("--safe-concept", default="safe", help="the concept steering moves towards")
    p.add_argument(
        "--skip-base",
        action="store_true",
        help="do not evaluate the base model (an earlier base.json in DIR/detox is shown)",
    )
    p.add_argument(
        "--refusal-rule",
        choices=["strict", "paper"],
        default="strict",
        help="how a refusal is counted: strict (a refusal phrase opens the reply) or paper "
        "(the SEER authors' case-sensitive substrings anywhere in it)",
    )
    p.set_defaults(func=_cmd_detox)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("transformers", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except (SeerError, OSError) as exc:  # OSError: a missing file, permissions, a full disk
        if args.debug:
            raise
        print(f"seer: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if args.debug:
            raise
        print(
            f"seer: interrupted: {exc or 'rerun the same command with --resume to continue'}",
            file=sys.stderr,
        )
        return 130


def _json_default(obj: object) -> object:
    return obj.tolist() if hasattr(obj, "tolist") else str(obj)


def dumps(obj: object) -> str:
    return json.dumps(obj, default=_json_default, ensure_ascii=False)


if __name__ == "__main__":
    sys.exit(main())
