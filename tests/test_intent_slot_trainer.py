"""Training the intent + slot model (`llmembed_hf.intent_slot.trainer`): the metric that picks the best epoch, the
callback that keeps that epoch's weights, and a whole `finetune_intent_slot` run carving its own validation rows."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

from helpers import INTENTS, SLOTS
from llmembed_hf.intent_slot import IntentSlotArguments
from llmembed_hf.intent_slot.trainer import KeepBestCallback, finetune_intent_slot, selection_metric
from llmembed_hf.model_card import IntentSlotReport


@pytest.mark.parametrize("intent_weight, slot_weight, metric", [(1.0, 1.0, "exact_match"),
                                                               (1.0, 0.0, "intent_accuracy"),
                                                               (0.0, 0.5, "slot_f1")])
def test_selection_metric_follows_the_task_trained(intent_weight, slot_weight, metric):
    assert selection_metric(intent_weight, slot_weight) == metric


class TrainedWeights:
    """What `KeepBestCallback` needs of a model: its trained weights out and back in."""

    def __init__(self) -> None:
        self.weight = torch.zeros(2)
        self.loaded: list[tuple[dict[str, torch.Tensor], str]] = []

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        return {"head.weight": self.weight}

    def load_trained_state_dict(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        self.loaded.append((state_dict, source))
        self.weight = state_dict["head.weight"].clone()


def evaluate(callback: KeepBestCallback, model: TrainedWeights, epoch: float, value: float | None) -> None:
    model.weight.fill_(epoch)  # the weights after this epoch, changed in place as an optimiser does
    metrics = {"eval_loss": 0.1} if value is None else {"eval_exact_match": value, "eval_loss": 0.1}
    callback.on_evaluate(None, SimpleNamespace(epoch=epoch), None, metrics=metrics, model=model)


def test_keep_best_restores_the_best_evaluations_weights_at_train_end():
    model, callback = TrainedWeights(), KeepBestCallback("exact_match")
    for epoch, value in [(1.0, 0.5), (2.0, 0.8), (3.0, 0.6), (4.0, 0.8), (5.0, None)]:
        evaluate(callback, model, epoch, value)
    assert callback.metric == "eval_exact_match"
    assert (callback.best, callback.best_epoch) == (0.8, 2.0)  # a tie does not replace the first best
    assert model.loaded == [] and model.weight.tolist() == [5.0, 5.0]
    callback.on_train_end(None, SimpleNamespace(epoch=5.0), None, model=model)
    assert model.weight.tolist() == [2.0, 2.0]  # a copy of epoch 2's weights, not the tensor trained on since
    assert [source for _, source in model.loaded] == ["best epoch"]


def test_keep_best_leaves_the_model_alone_without_its_metric():
    model, callback = TrainedWeights(), KeepBestCallback("slot_f1")
    evaluate(callback, model, 1.0, 0.9)  # reports exact_match, not slot_f1
    callback.on_train_end(None, SimpleNamespace(epoch=1.0), None, model=model)
    assert callback.best is None and callback.best_epoch is None and model.loaded == []
    assert model.weight.tolist() == [1.0, 1.0]


#: Utterances whose intent and slots follow keywords (as in test_cli's toy data).
PATTERNS = [
    (["set", "the", "mat", "at", "good", "dog"], ["O", "O", "O", "O", "B-date", "I-date"], 0),
    (["play", "the", "cat", "film"], ["O", "O", "B-time", "O"], 1),
    (["is", "it", "bad", "on", "good"], ["O", "O", "O", "O", "B-date"], 2),
]


def in_memory_data(sizes: dict[str, int]) -> DatasetDict:
    """A `DatasetDict` whose tags and intents are ClassLabel features (the names travel with the data)."""
    features = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=SLOTS)),
                         "label": ClassLabel(names=INTENTS)})
    splits = {}
    for split, size in sizes.items():
        rows = [PATTERNS[i % len(PATTERNS)] for i in range(size)]
        splits[split] = Dataset.from_dict({"tokens": [r[0] for r in rows],
                                           "ner_tags": [[SLOTS.index(t) for t in r[1]] for r in rows],
                                           "label": [r[2] for r in rows]}, features=features)
    return DatasetDict(splits)


def test_finetune_without_a_validation_split_carves_one_and_writes_report_and_card(tiny_backbones, tmp_path):
    output = tmp_path / "intent-slot"
    model, report = finetune_intent_slot(
        tiny_backbones["bert"], in_memory_data({"train": 6, "test": 3}), output,
        IntentSlotArguments(mode="frozen", epochs=2, batch_size=4), validation_split=None, validation_fraction=0.05,
    )
    # 5% of 6 rows rounds to none: one row is still held out, and the other five train
    assert (report.num_train, report.num_validation, report.num_eval) == (5, 1, 3)
    assert report.validation == "5% of the training subset (seed 42)"
    assert report.dataset == "in-memory DatasetDict" and report.selection_metric == "exact_match"
    assert report.best_epoch in (1.0, 2.0)
    assert set(report.validation_metrics) >= {"intent_accuracy", "slot_f1", "exact_match", "loss"}
    assert model.config.num_labels == len(INTENTS) and model.config.num_slot_labels == len(SLOTS)

    saved = json.loads((output / "training_report.json").read_text())
    assert set(saved) == {f.name for f in dataclasses.fields(IntentSlotReport)}
    assert (saved["num_train"], saved["num_validation"]) == (5, 1)
    assert IntentSlotReport.load(output / "training_report.json").best_epoch == report.best_epoch

    card = (output / "README.md").read_text()
    assert "## Training" in card and f"Joint intent detection ({len(INTENTS)} intents)" in card
    assert f"({len(SLOTS)} BIO tags)" in card and "trained on 5 utterances" in card
    assert "on 1 validation" in card and "$" + "num_intents" not in card


def test_finetune_keeps_a_training_row_whatever_the_fraction(tiny_backbones, tmp_path):
    _, report = finetune_intent_slot(
        tiny_backbones["bert"], in_memory_data({"train": 6}), tmp_path / "out",
        IntentSlotArguments(mode="frozen", epochs=1, batch_size=8, intent_loss_weight=0.0),
        validation_split=None, validation_fraction=0.99, eval_split=None,
    )
    assert (report.num_train, report.num_validation, report.num_eval) == (1, 5, 0)
    assert report.selection_metric == "slot_f1" and report.eval_metrics == {}


def test_keep_best_writes_the_best_epoch_and_a_new_callback_reads_it_back(tmp_path):
    """The best epoch survives a crash: written to the checkpoint folder at every new best, read back on resume."""
    model, callback = TrainedWeights(), KeepBestCallback("exact_match", tmp_path)
    for epoch, value in [(1.0, 0.5), (2.0, 0.8), (3.0, 0.6)]:
        evaluate(callback, model, epoch, value)
    resumed = KeepBestCallback("exact_match", tmp_path)
    assert (resumed.best, resumed.best_epoch) == (0.8, 2.0)
    assert resumed.state_dict["head.weight"].tolist() == [2.0, 2.0]
    assert KeepBestCallback("slot_f1", tmp_path).best is None  # another selection metric: not this run's best
    assert sorted(p.name for p in tmp_path.iterdir()) == [KeepBestCallback.BEST_FILE]  # no temporary file left


def test_full_training_of_the_seen_embedding_rows_only_gives_the_same_model(tiny_backbones, tmp_path):
    """Rows of tokens absent from the training utterances get no gradient: leaving them out changes no weight."""
    data = in_memory_data({"train": 12, "validation": 6, "test": 3})
    models = {}
    for seen in (False, True):
        args = IntentSlotArguments(mode="full", epochs=3, batch_size=4, learning_rate=1e-3, seen_embeddings_only=seen)
        models[seen], _ = finetune_intent_slot(tiny_backbones["bert"], data, tmp_path / f"seen-{seen}", args)
    assert isinstance(models[True].backbone.get_input_embeddings(), torch.nn.Embedding)  # merged back
    whole, seen = models[False].trained_state_dict(), models[True].trained_state_dict()
    assert whole.keys() == seen.keys()
    for key, value in whole.items():
        torch.testing.assert_close(seen[key], value, atol=1e-5, rtol=1e-4, msg=key)
    reloaded = type(models[True]).from_pretrained(tmp_path / "seen-True")
    embeddings = reloaded.backbone.get_input_embeddings().weight
    torch.testing.assert_close(embeddings, models[False].backbone.get_input_embeddings().weight, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode, extra", [("frozen", {}), ("lora", {}), ("full", {"seen_embeddings_only": True})])
def test_resumed_intent_slot_run_ends_like_an_uninterrupted_one(tiny_backbones, tmp_path, monkeypatch, mode, extra):
    """Killed after its first epoch and resumed, a run ends with the same weights and best epoch as a whole run."""
    import llmembed_hf.intent_slot.trainer as trainer_module
    from helpers import interrupted_after
    from llmembed_hf.training_args import OutputArguments

    data = in_memory_data({"train": 12, "validation": 6, "test": 3})
    args = IntentSlotArguments(mode=mode, epochs=3, batch_size=4, learning_rate=5e-3, **extra)
    whole_model, whole = finetune_intent_slot(tiny_backbones["bert"], data, tmp_path / "whole", args)

    output = OutputArguments(str(tmp_path / "resumed"), resume=True)
    with monkeypatch.context() as patch:
        patch.setattr(trainer_module, "Trainer", interrupted_after(trainer_module.Trainer, epoch=1))
        with pytest.raises(KeyboardInterrupt):
            finetune_intent_slot(tiny_backbones["bert"], data, output, args)
    assert (output.checkpoint_dir / KeepBestCallback.BEST_FILE).is_file()
    resumed_model, resumed = finetune_intent_slot(tiny_backbones["bert"], data, output, args)

    assert resumed.best_epoch == whole.best_epoch and resumed.validation_metrics == pytest.approx(
        whole.validation_metrics)
    whole_state, resumed_state = whole_model.trained_state_dict(), resumed_model.trained_state_dict()
    assert whole_state.keys() == resumed_state.keys()
    assert all(torch.allclose(whole_state[k], resumed_state[k], atol=1e-6) for k in whole_state)
    assert not output.checkpoint_dir.exists()  # removed once the result is published
