"""The same prompts, greedy, from the default model and its quantized models side by side.

    python benchmarks/generate.py            # after benchmarks/accuracy.py has saved its rows' models

Loads the full-precision default model and every model ``benchmarks/accuracy.py`` saved under
``artifacts/accuracy-models/`` (the best recipe per budget, uniform and mixed, and the presets), asks each the same
chat prompts (the tokenizer's chat template) and decodes ``--tokens`` new tokens greedily. Writes
``benchmarks/results/generations.json``: per model, its row, bits per weight and answers.
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
PROMPTS = ("What is the capital of France?", "Write one sentence about the ocean.", "List three colours.")


@torch.no_grad()
def answer(model, tokenizer, prompt: str, tokens: int) -> str:
    messages = [{"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    if not torch.is_tensor(ids):  # newer tokenizers return a BatchEncoding
        ids = ids["input_ids"]
    out = model.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=40, help="new tokens per answer")
    args = parser.parse_args()
    rows = []
    folders = [("fp", "default")] + [(p.name, str(p)) for p in sorted(MODELS.iterdir()) if p.is_dir()]
    for row, source in folders:
        model, tokenizer = load_model(source)
        bits = 16.0
        report = Path(source) / "report.json"
        if report.is_file():
            layers = json.loads(report.read_text())["layers"]
            sizes = [r["out_features"] * r["in_features"] for r in layers]
            bits = sum(r["bits_per_weight"] * s for r, s in zip(layers, sizes)) / sum(sizes)
        answers = {p: answer(model, tokenizer, p, args.tokens) for p in PROMPTS}
        rows.append({"row": row, "bits_per_weight": round(bits, 4), "answers": answers})
        print(json.dumps(rows[-1]), flush=True)
    result = {"commit": code_commit(), "command": "python benchmarks/generate.py", "tokens": args.tokens, "rows": rows}
    (RESULTS / "generations.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
