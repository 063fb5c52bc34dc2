"""The ``vptq-lab`` command line. Errors print as one line (``vptq-lab: error: ...``), exit status 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from .errors import VPTQLabError

__all__ = ["main", "build_parser"]

DEFAULT_MODELS = ("default", "smollm2-135m", "SmolLM2-135M-Instruct")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seqlen", type=_positive_int, default=2048, help="tokens per window (default 2048)")
    p.add_argument("--max-windows", type=_positive_int, default=None, help="evaluate only the first N windows")
    p.add_argument("--split", default="test", help="test, validation or train (default test)")
    p.add_argument("--data-dir", default=None, help="folder with wiki.*.raw (default: $VPTQ_LAB_DATA, then the hub)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vptq-lab", description="VPTQ workbench: quantize, evaluate, inspect.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="WikiText-2 perplexity of a model (the paper's protocol)")
    p.add_argument("--model", default="default", help="'default', a local folder (VPTQ checkpoints too) or a hub id")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_eval_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="the main job on the embedded default model")
    p.add_argument("--max-windows", type=_positive_int, default=8, help="windows evaluated (default 8)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_demo)
    return parser


def _print_record(record: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(record))
        return
    width = max(map(len, record))
    for key, value in record.items():
        print(f"{key:<{width}}  {value}")


def _eval_record(model_name: str, args: argparse.Namespace) -> dict:
    from .eval import perplexity
    from .models import BASELINE_NOTE, load_model

    model, tokenizer = load_model(model_name)
    record = perplexity(model, tokenizer, split=args.split, seqlen=args.seqlen, max_windows=args.max_windows,
                        data_dir=args.data_dir, progress=not args.no_progress).to_dict()
    record = {"model": model_name, **record}
    if model_name in DEFAULT_MODELS:
        record["note"] = BASELINE_NOTE
    if not record["comparable"]:
        record["warning"] = "stand-in corpus: NOT comparable to published WikiText-2 numbers"
    return record


def cmd_eval(args: argparse.Namespace) -> int:
    _print_record(_eval_record(args.model, args), args.json)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    eval_args = argparse.Namespace(split="test", seqlen=2048, max_windows=args.max_windows, data_dir=None,
                                   no_progress=False)
    _print_record(_eval_record("default", eval_args), args.json)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except VPTQLabError as exc:
        print(f"vptq-lab: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
