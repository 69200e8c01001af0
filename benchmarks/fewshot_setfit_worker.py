"""SetFit for one few-shot draw, run by `bench_fewshot.py` in the `.venv-setfit` interpreter (`setup_setfit.sh`), so the
project's environment never imports SetFit:

    .venv-setfit/bin/python benchmarks/fewshot_setfit_worker.py JOB.json RESULT.json

JOB.json: ``{"body": folder of a sentence-transformers model, "train_texts": [...], "train_labels": [...],
"test_texts": [...], "seed": int, "training_args": {...}}``. The model is ``SetFitModel.from_pretrained(body)`` (its
default head: scikit-learn's logistic regression), trained by SetFit's ``Trainer`` with ``TrainingArguments(seed=seed)``
and SetFit's defaults for everything else (``training_args`` may override fields; the benchmark records which).
RESULT.json: the test predictions and the seconds spent loading, training (contrastive body + head) and predicting.
Checkpoints, if SetFit's defaults write any, go to the working directory: the benchmark runs this in a temporary one.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the body is a local folder: never reach for the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(job_path: str, result_path: str) -> None:
    with open(job_path, encoding="utf-8") as handle:
        job = json.load(handle)
    started = time.perf_counter()
    import setfit
    import torch
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    imported = time.perf_counter()
    model = SetFitModel.from_pretrained(job["body"])
    loaded = time.perf_counter()
    args = TrainingArguments(seed=job["seed"], **job.get("training_args", {}))
    trainer = Trainer(model=model, args=args,
                      train_dataset=Dataset.from_dict({"text": job["train_texts"], "label": job["train_labels"]}))
    trainer.train()
    trained = time.perf_counter()
    predictions = model.predict(job["test_texts"], as_numpy=True)
    predicted = time.perf_counter()
    state = trainer.st_trainer.state if hasattr(trainer, "st_trainer") else None
    result = {
        "predictions": [int(p) for p in predictions],
        "import_s": imported - started, "load_s": loaded - imported, "train_s": trained - loaded,
        "predict_s": predicted - trained,
        "embedding_steps": getattr(state, "global_step", None),
        "device": str(model.model_body.device), "torch_threads": torch.get_num_threads(),
        "setfit": setfit.__version__, "torch": torch.__version__,
        "training_args": {"batch_size": list(args.batch_size), "num_epochs": list(args.num_epochs),
                          "max_steps": args.max_steps, "sampling_strategy": args.sampling_strategy,
                          "num_iterations": args.num_iterations, "body_learning_rate": list(args.body_learning_rate),
                          "head_learning_rate": args.head_learning_rate, "end_to_end": args.end_to_end,
                          "seed": args.seed},
    }
    with open(result_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main(*sys.argv[1:3])
