"""Fast fine-tuning on CPU (issue 22, part 3): how much per epoch length-grouped batches, bf16 mixed precision and
frozen or seen-only word embeddings save against `Trainer`'s defaults, on the same data in one run, and whether
accuracy stays the same.

Every variant fine-tunes the same backbone the same way (`llmembed_hf.finetune`, same seed, same epochs) on MASSIVE
en-US intents (its validation split picks the epoch, the test split is scored once); only the batching, the
precision and the embeddings' training change:

* ``defaults``: what `Trainer` does by default with a tokenizer: random batches padded to their longest text
  (``DataCollatorWithPadding``), fp32;
* ``grouped``: ``group_by_length=True`` (transformers' ``LengthGroupedSampler``: batches of similar lengths, less
  padding);
* ``bf16``: ``bf16=True`` (autocast; fast only on CPUs with native bf16, which the machine line says);
* ``grouped+bf16``: both;
* ``grouped+bf16+frozen-emb``: both, and the input word embeddings frozen (``freeze_embeddings=True``): their
  gradient and AdamW update span the whole vocabulary (half of MiniLM's weights) while a batch of short utterances
  uses a few hundred rows;
* ``grouped+bf16+seen-emb``: both, and only the embedding rows of the training texts' tokens trained
  (``seen_embeddings_only=True``): the other rows never get a gradient, so the model is the same as grouped+bf16's
  while the gradient and AdamW update shrink to the training vocabulary.

Time per epoch is `Trainer`'s ``train_runtime`` less its evaluations, divided by the epochs (checkpoint saving stays
in). Variants run one after the other in one process, in the order given (this machine's speed drifts: read the
ratios, and rerun with another order to check them).

    python benchmarks/bench_finetune_speed.py                                  # MiniLM, full fine-tuning, all rows
    python benchmarks/bench_finetune_speed.py --max-train 2000 --variants defaults grouped+bf16 --no-write
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_common import DATASETS, RESULTS, Measure, machine, write_sections

from llmembed_hf.finetuning import finetune
from llmembed_hf.modeling.modeling_llmembed import native_bf16_supported
from llmembed_hf.training_args import FinetuneArguments

TITLE = "## Fine-tuning speed on CPU: length-grouped batches, bf16, frozen or seen-only embeddings"
#: Variant name -> the `FinetuneArguments` fields it changes.
VARIANTS: dict[str, dict[str, bool]] = {
    "defaults": {},
    "grouped": {"group_by_length": True},
    "bf16": {"bf16": True},
    "grouped+bf16": {"group_by_length": True, "bf16": True},
    "grouped+bf16+frozen-emb": {"group_by_length": True, "bf16": True, "freeze_embeddings": True},
    "grouped+bf16+seen-emb": {"group_by_length": True, "bf16": True, "seen_embeddings_only": True},
}
GOAL_SPEEDUP = 2.0


def epoch_seconds(log_history: list[dict[str, Any]], epochs: int) -> float:
    """Training seconds per epoch: `Trainer`'s train_runtime less the time its evaluations took."""
    runtime = next(entry["train_runtime"] for entry in log_history if "train_runtime" in entry)
    evaluation = sum(entry["eval_runtime"] for entry in log_history if "eval_runtime" in entry)
    return (float(runtime) - float(evaluation)) / epochs


def run_variant(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    finetune_args = FinetuneArguments(method=args.method, epochs=args.epochs, batch_size=args.batch_size,
                                      max_length=args.max_length, seed=args.seed, learning_rate=args.learning_rate,
                                      **VARIANTS[name])
    with Measure() as measure:
        _, _, report = finetune(args.backbone, DATASETS / "massive_en", work / name, finetune_args,
                                validation_split="validation", max_train_samples=args.max_train)
    return {"variant": name, "epoch_s": epoch_seconds(report.log_history, args.epochs),
            "validation_accuracy": report.validation_metrics["eval_accuracy"],
            "test_accuracy": report.eval_metrics["accuracy"], "num_train": report.num_train,
            "wall_s": measure.wall, "peak_rss_mb": measure.peak / 2**20}


def markdown(results: dict[str, Any]) -> str:
    info, args, rows = results["machine"], results["args"], results["rows"]
    base = next((row for row in rows if row["variant"] == "defaults"), None)
    lines = [TITLE, "", f"Command: `{results['command']}`  ", f"Date: {results['date']}  ",
             f"Machine: {info['nproc']} CPU cores ({info['cpu']}), native bf16: "
             f"{'yes' if results['native_bf16'] else 'no'}, torch {info['torch']}, transformers "
             f"{info['transformers']}; load average before {info['loadavg_before'][0]:.2f}.  ",
             f"{args['backbone']} {args['method']} fine-tuning on MASSIVE en-US intents: {rows[0]['num_train']:,} "
             f"training utterances, {args['epochs']} epoch(s), batch {args['batch_size']}, learning rate "
             f"{args.get('learning_rate') or 'the default'}, seed {args['seed']}; "
             "the validation split picks the epoch, the 2,974 test utterances are scored once. `s / epoch`: training "
             "time per epoch without the evaluations. Goal (issue 22): >= 2x faster per epoch than `Trainer`'s "
             "defaults at the same accuracy.", "",
             "| variant | s / epoch | speed-up vs defaults | validation accuracy | test accuracy | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        speedup = f"{base['epoch_s'] / row['epoch_s']:.2f}x" if base else "–"
        lines.append(f"| {row['variant']} | {row['epoch_s']:.1f} | {speedup} | "
                     f"{100 * row['validation_accuracy']:.2f} | {100 * row['test_accuracy']:.2f} | "
                     f"{row['peak_rss_mb']:,.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="minilm", help="a preset backbone name, folder or Hub id")
    parser.add_argument("--method", default="full", choices=["full", "lora"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--max-train", type=int, default=None, help="seeded training subset (default: all rows)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="the fine-tuning learning rate (default: FinetuneArguments' for the method)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    command = "python benchmarks/bench_finetune_speed.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    info = machine()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ft-speed-") as work:
        for name in args.variants:
            rows.append(run_variant(name, args, Path(work)))
            print(json.dumps(rows[-1]), flush=True)
    results = {"machine": info, "args": vars(args), "command": command, "rows": rows,
               "native_bf16": native_bf16_supported("cpu"),
               "date": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    report = markdown(results)
    print(report)
    if not args.no_write:
        write_sections(RESULTS, [(TITLE, report)])


if __name__ == "__main__":
    main()
