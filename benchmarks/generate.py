"""The same prompts, greedy, from the default model and its quantized models side by side.

    python benchmarks/generate.py                      # after benchmarks/accuracy.py has saved its rows' models
    python benchmarks/generate.py --rows 2-best-mixed  # only those rows again; the file keeps the others

Loads the full-precision default model and every model ``benchmarks/accuracy.py`` saved under
``artifacts/accuracy-models/`` (the best recipe per budget, uniform and mixed, and the presets), asks each the same
chat prompts (the tokenizer's chat template) and decodes ``--tokens`` new tokens greedily. Writes
``benchmarks/results/generations.json``: per model, its row, bits per weight, answers and the commit that made
them. With ``--rows``, only the full-precision model and those rows' saved models answer again: a rerun row
replaces its entry, and the other entries stay as they were made (each names its own commit).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from _bench import RESULTS

from vptq_lab import load_model
from vptq_lab.lab.results import code_commit

MODELS = Path("artifacts") / "accuracy-models"
OUT = RESULTS / "generations.json"
PROMPTS = ("What is the capital of France?", "Write one sentence about the ocean.", "List three colours.")


@torch.no_grad()
def answer(model, tokenizer, prompt: str, tokens: int) -> str:
    messages = [{"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    if not torch.is_tensor(ids):  # newer tokenizers return a BatchEncoding
        ids = ids["input_ids"]
    out = model.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def merge(previous: dict, rows: list[dict]) -> list[dict]:
    """``rows`` (just made) with the entries of ``previous`` (a generations.json) for the other rows, each naming
    the commit that made it (an older file names one commit for all); "fp" first, then by row."""
    new = {r["row"] for r in rows}
    kept = [{**r, "commit": r.get("commit", previous.get("commit"))} for r in previous["rows"] if r["row"] not in new]
    return sorted(rows + kept, key=lambda r: (r["row"] != "fp", r["row"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=40, help="new tokens per answer")
    parser.add_argument("--rows", default=None, help="comma-separated saved rows to answer again (default: all)")
    args = parser.parse_args()
    saved = sorted(p.name for p in MODELS.iterdir() if p.is_dir()) if MODELS.is_dir() else []
    wanted = saved if args.rows is None else args.rows.split(",")
    missing = sorted(set(wanted) - set(saved))
    if missing:
        parser.error(f"no saved model for {missing} under {MODELS}: run benchmarks/accuracy.py --rows first")
    previous = json.loads(OUT.read_text()) if args.rows is not None and OUT.is_file() else {"rows": []}
    if previous["rows"] and previous.get("tokens") != args.tokens:
        parser.error(f"{OUT} holds answers of {previous.get('tokens')} tokens: pass --tokens {previous.get('tokens')}")
    commit = code_commit()
    rows = []
    for row, source in [("fp", "default")] + [(name, str(MODELS / name)) for name in wanted]:
        model, tokenizer = load_model(source)
        bits = 16.0
        report = Path(source) / "report.json"
        if report.is_file():
            layers = json.loads(report.read_text())["layers"]
            sizes = [r["out_features"] * r["in_features"] for r in layers]
            bits = sum(r["bits_per_weight"] * s for r, s in zip(layers, sizes)) / sum(sizes)
        answers = {p: answer(model, tokenizer, p, args.tokens) for p in PROMPTS}
        rows.append({"row": row, "bits_per_weight": round(bits, 4), "answers": answers, "commit": commit})
        print(json.dumps(rows[-1]), flush=True)
    result = {"command": "python benchmarks/generate.py", "tokens": args.tokens, "rows": merge(previous, rows)}
    OUT.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
