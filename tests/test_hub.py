"""push_to_hub and loading by repo id, without a Hub.

`HfApi.create_repo` and the commit boundary of `HfApi.upload_folder` are replaced by fakes that capture the
uploaded files; those files are then laid out as a Hugging Face cache snapshot, so ``from_pretrained("org/name")``
with ``HF_HUB_OFFLINE=1`` reads exactly what would have been pushed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard
from huggingface_hub.hf_api import CommitInfo, RepoUrl
from huggingface_hub.utils import HFValidationError
from safetensors.torch import load as load_safetensors
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

import llmembed_hf.modeling.modeling_llmembed as modeling
from llmembed_hf import (
    HeadTrainingArguments,
    LLMEmbedConfig,
    LLMEmbedForSequenceClassification,
    LLMEmbedTokenizer,
    extract_features,
    fit_head,
    train_head,
)

REPO_ID = "org/llmembed-tiny"
ID2LABEL = {0: "neg", 1: "pos"}
#: Lower-case words of conftest's tiny vocabularies ("not" is left out: its id is beyond the tiny vocab_size).
FILLER = "the a cat dog sat on mat movie film very".split()
TEXTS = ["the cat sat on the mat", "a good movie", "very bad film", "good good dog", "the bad bad mat", "film"]
MODELING_DIR = Path(modeling.__file__).parent
REMOTE_CODE_FILES = ("configuration_llmembed.py", "modeling_llmembed.py", "tokenization_llmembed.py")


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


@pytest.fixture
def hub(monkeypatch) -> FakeHub:
    return install_fake_hub(monkeypatch)


def publish_to_hf_cache(cache: Path, commit: Commit, known_missing: tuple[str, ...] = ()) -> Path:
    """Lay out a captured commit as the HF cache holds it after a download; returns the snapshot folder.

    ``known_missing``: files an online load looked up and found absent, which the cache records under
    ``.no_exist/<commit>/`` (``snapshot_download``/``hf download`` record none).
    """
    repo_folder = cache / f"models--{commit.repo_id.replace('/', '--')}"
    snapshot = repo_folder / "snapshots" / commit.oid
    for path, data in commit.files.items():
        (snapshot / path).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / path).write_bytes(data)
    for path in known_missing:
        marker = repo_folder / ".no_exist" / commit.oid / path
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    (repo_folder / "refs").mkdir(parents=True, exist_ok=True)
    (repo_folder / "refs" / "main").write_text(commit.oid)
    return snapshot


#: What an online ``pipeline(model="org/name")`` finds missing and records in the cache: AutoTokenizer looks for a
#: config.json beside each backbone tokenizer (tokenization_llmembed.py loads them with subfolder="tokenizers/<name>").
ONLINE_LOAD_MISSING = ("tokenizers/llm/config.json", "tokenizers/enc/config.json")


def offline_env(tmp_path: Path, hf_cache: Path) -> dict[str, str]:
    """A subprocess environment with no Hub: offline, its own HF_HOME (remote code modules) and HF cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(
        HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), HF_HUB_CACHE=str(hf_cache),
        LLMEMBED_CACHE=os.environ["LLMEMBED_CACHE"], TOKENIZERS_PARALLELISM="false",
    )
    return env


def run_script(python: str | Path, script: str, *args: str, cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run a script file (not ``-c``: the cwd must not be importable) and parse the JSON of its last line."""
    cwd.mkdir(parents=True, exist_ok=True)
    path = cwd / "script.py"
    path.write_text(textwrap.dedent(script))
    result = subprocess.run([str(python), str(path), *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    if result.returncode != 0:
        pytest.fail(f"{path} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------------------
# A tiny head with deterministic, non-trivial weights, pushed once
# ----------------------------------------------------------------------------------------------------------------------


def keyword_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Texts of filler words with "good" (label 1) or "bad" (label 0) in them."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
        words.insert(rng.randint(0, len(words)), "good" if i % 2 else "bad")
        rows.append({"text": " ".join(words), "label": i % 2})
    return rows


def tiny_head_config(tiny_backbones: dict[str, str], **overrides: Any) -> LLMEmbedConfig:
    """conftest's ``tiny_config(**overrides)``, for module-scoped fixtures (which cannot use that factory)."""
    specs = [
        dict(name="llm", model_id=tiny_backbones["llama"], role="llm", layers=[-3, -2, -1], pooling="mean",
             hidden_size=48, max_length=32),
        dict(name="enc", model_id=tiny_backbones["bert"], role="encoder", layers=[-1], pooling="cls",
             hidden_size=32, max_length=32),
    ]
    return LLMEmbedConfig(**{**dict(backbones=specs, projection_dim=16, mlp_hidden_sizes=[32, 16]), **overrides})


def pipeline_outputs(model: LLMEmbedForSequenceClassification, texts: list[str]) -> list[dict[str, Any]]:
    classifier = pipeline("text-classification", model=model, tokenizer=model.tokenizer, device="cpu")
    return classifier(texts)


def assert_same_predictions(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [p["label"] for p in actual] == [p["label"] for p in expected]
    assert [p["score"] for p in actual] == pytest.approx([p["score"] for p in expected], abs=1e-5)


@dataclass
class Published:
    model: LLMEmbedForSequenceClassification
    expected: list[dict[str, Any]]  #: the in-process model's pipeline outputs on TEXTS
    hub: FakeHub
    info: CommitInfo

    @property
    def commit(self) -> Commit:
        return self.hub.commits[0]


@pytest.fixture(scope="module")
def published(tiny_backbones, tmp_path_factory) -> Published:
    """A tiny head fitted with `fit_head` on features of keyword texts (seeded), pushed once to the fake Hub."""
    torch.manual_seed(0)
    model = LLMEmbedForSequenceClassification.from_backbones(
        tiny_head_config(tiny_backbones, num_labels=2, id2label=ID2LABEL)
    )
    rows = keyword_rows(32, seed=0)
    features = extract_features(model, [r["text"] for r in rows], extra_columns={"labels": [r["label"] for r in rows]})
    fit_head(model, features, None, tmp_path_factory.mktemp("fit"),
             HeadTrainingArguments(epochs=3, batch_size=16, learning_rate=1e-2))
    model.eval()
    expected = pipeline_outputs(model, TEXTS)
    with pytest.MonkeyPatch.context() as monkeypatch:
        hub = install_fake_hub(monkeypatch)
        info = model.push_to_hub(REPO_ID, commit_message="x", private=True, revision=None)
    return Published(model, expected, hub, info)


# ----------------------------------------------------------------------------------------------------------------------
# 1. Round trip by repo id
# ----------------------------------------------------------------------------------------------------------------------


def test_push_to_hub_uploads_one_commit_with_the_head_only(published, tiny_backbones):
    model, hub = published.model, published.hub
    assert len(hub.commits) == 1, [c.via for c in hub.commits]
    commit = published.commit
    assert published.info.oid == commit.oid and published.info.commit_message == "x"
    assert hub.repos == [{"repo_id": REPO_ID, "private": True, "exist_ok": True}]
    assert commit.repo_id == REPO_ID and commit.commit_message == "x" and commit.revision is None
    assert not commit.create_pr and not commit.deletions
    assert hub.validated_cards == [commit.files["README.md"].decode()]

    files = commit.files
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", *REMOTE_CODE_FILES, "README.md",
                 "training_report.json"):
        assert name in files and files[name], name
    for backbone in ("llm", "enc"):
        assert f"tokenizers/{backbone}/tokenizer_config.json" in files
        assert f"tokenizers/{backbone}/tokenizer.json" in files

    # The remote code is the package's own modules, byte for byte.
    for name in REMOTE_CODE_FILES:
        assert files[name] == (MODELING_DIR / name).read_bytes(), name

    config = json.loads(files["config.json"])
    assert config["model_type"] == "llmembed"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_llmembed.LLMEmbedConfig",
        "AutoModel": "modeling_llmembed.LLMEmbedForSequenceClassification",
        "AutoModelForSequenceClassification": "modeling_llmembed.LLMEmbedForSequenceClassification",
    }
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    specs = {spec["name"]: spec for spec in config["backbones"]}
    for name, folder in (("llm", tiny_backbones["llama"]), ("enc", tiny_backbones["bert"])):
        assert specs[name]["model_id"] == folder
        weights = Path(folder, "model.safetensors").read_bytes()
        assert specs[name]["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert (specs["llm"]["hidden_size"], specs["enc"]["hidden_size"]) == (48, 32)

    tokenizer_config = json.loads(files["tokenizer_config.json"])
    assert tokenizer_config["auto_map"]["AutoTokenizer"][0] == "tokenization_llmembed.LLMEmbedTokenizer"
    assert [b["name"] for b in tokenizer_config["backbones"]] == ["llm", "enc"]

    # Head only: its tensors are exactly the model's state, and no backbone weights travel with it.
    head = load_safetensors(files["model.safetensors"])
    assert head and all(key.startswith("head.") for key in head), sorted(head)
    state = model.state_dict()
    assert sorted(head) == sorted(state)
    for key, tensor in head.items():
        assert torch.equal(tensor, state[key]), key
    assert [p for p in files if p.endswith((".safetensors", ".bin", ".gguf", ".pt", ".pth"))] == ["model.safetensors"]
    backbone_bytes = sum(p.numel() * p.element_size() for m in model.backbones.values() for p in m.parameters())
    assert sum(len(data) for data in files.values()) < backbone_bytes


ROUND_TRIP_SCRIPT = """
    import json, sys
    import torch
    import llmembed_hf
    from datasets import Dataset
    from transformers import AutoModel, Trainer, TrainingArguments, pipeline

    repo, texts = sys.argv[1], json.loads(sys.argv[2])
    features = torch.load(sys.argv[3])

    model = AutoModel.from_pretrained(repo)
    model.eval()
    with torch.no_grad():
        logits = model(pooled_features=features).logits
    classifier = pipeline("text-classification", model=repo, device="cpu")
    predictions = classifier(texts)

    # Continue training the loaded head with Trainer on toy pooled features.
    generator = torch.Generator().manual_seed(0)
    toy = torch.randn(16, model.config.feature_size, generator=generator)
    data = Dataset.from_dict({"pooled_features": toy.tolist(), "labels": [i % 2 for i in range(16)]})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = TrainingArguments(output_dir="trainer", max_steps=3, per_device_train_batch_size=8, learning_rate=1e-2,
                             report_to=[], use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True)
    result = Trainer(model=model, args=args, train_dataset=data.with_format("torch")).train()
    changed = sorted(k for k, v in model.state_dict().items() if not torch.equal(v, before[k]))
    print(json.dumps({
        "model_class": f"{type(model).__module__}.{type(model).__name__}",
        "name_or_path": model.name_or_path,
        "pipeline_model": type(classifier.model).__module__,
        "tokenizer": type(classifier.tokenizer).__name__,
        "logits": logits.tolist(),
        "predictions": predictions,
        "train_steps": result.global_step,
        "train_loss": result.training_loss,
        "changed": changed,
        "backbones_loaded": sorted(model.backbones),
    }))
"""


@pytest.mark.parametrize(
    "known_missing",
    [pytest.param((), id="as-downloaded"), pytest.param(ONLINE_LOAD_MISSING, id="after-an-online-load")],
)
def test_round_trip_by_repo_id_through_the_hf_cache(published, known_missing, tmp_path):
    """The three user lines (AutoModel, pipeline, Trainer) by repo id, in a fresh offline process."""
    model, expected = published.model, published.expected
    assert len({p["label"] for p in expected}) == 2, expected  # a non-trivial head: both classes predicted
    cache = tmp_path / "hf_cache"
    publish_to_hf_cache(cache, published.commit, known_missing)
    features = torch.randn(5, model.config.feature_size, generator=torch.Generator().manual_seed(1))
    torch.save(features, tmp_path / "features.pt")
    with torch.no_grad():
        reference_logits = model(pooled_features=features).logits

    out = run_script(sys.executable, ROUND_TRIP_SCRIPT, REPO_ID, json.dumps(TEXTS), str(tmp_path / "features.pt"),
                     cwd=tmp_path / "elsewhere", env=offline_env(tmp_path, cache))

    assert out["model_class"] == "llmembed_hf.modeling.modeling_llmembed.LLMEmbedForSequenceClassification"
    assert out["pipeline_model"] == "llmembed_hf.modeling.modeling_llmembed"
    assert out["tokenizer"] == "LLMEmbedTokenizer"
    assert out["name_or_path"] == REPO_ID
    torch.testing.assert_close(torch.tensor(out["logits"]), reference_logits, atol=1e-5, rtol=0)
    assert_same_predictions(out["predictions"], expected)

    assert out["train_steps"] == 3 and 0 < out["train_loss"] < float("inf")
    assert out["backbones_loaded"] == []  # training on pooled features never loads the backbones
    assert out["changed"] and all(k.startswith("head.") for k in out["changed"]), out["changed"]
    assert "head.classifier.0.weight" in out["changed"]
    assert not {"head.feature_mean", "head.feature_scale"} & set(out["changed"])  # buffers are not trained


# ----------------------------------------------------------------------------------------------------------------------
# 2. Model card
# ----------------------------------------------------------------------------------------------------------------------


def check_card_metadata(text: str, tiny_backbones: dict[str, str]) -> dict[str, Any]:
    data = ModelCard(text).data.to_dict()
    assert data["pipeline_tag"] == "text-classification"
    assert data["library_name"] == "transformers"
    assert data["license"] == "apache-2.0"
    assert {"llmembed", "text-classification"} <= set(data["tags"])
    assert data["base_model"] == [tiny_backbones["llama"], tiny_backbones["bert"]]
    return data


def test_card_of_the_pushed_head(published, tiny_backbones):
    text = published.commit.files["README.md"].decode()
    check_card_metadata(text, tiny_backbones)
    assert f'from_pretrained("{REPO_ID}")' in text
    assert f'pipeline("text-classification", model="{REPO_ID}", trust_remote_code=True)' in text


def test_card_of_an_untrained_head_warns(tiny_config, hub, tiny_backbones, caplog):
    torch.manual_seed(0)
    model = LLMEmbedForSequenceClassification.from_backbones(tiny_config(num_labels=2, id2label=ID2LABEL))
    with caplog.at_level(logging.WARNING):
        model.push_to_hub(REPO_ID)
    (commit,) = hub.commits
    assert commit.commit_message == "Upload LLMEmbed head"
    text = commit.files["README.md"].decode()
    data = check_card_metadata(text, tiny_backbones)
    assert "model-index" not in data
    assert "> **Warning:** this model is untrained; its predictions are random." in text
    assert json.loads(commit.files["training_report.json"])["num_train"] == 0
    assert not [p for p in commit.files if p.endswith(".png")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("no record of training" in m and REPO_ID in m for m in warnings), warnings
    assert any("untrained head" in m for m in warnings), warnings


def write_split(folder: Path, split: str, rows: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_card_of_a_head_trained_with_train_head(tiny_config, hub, tiny_backbones, tmp_path):
    data_dir = tmp_path / "data"
    write_split(data_dir, "train", keyword_rows(40, seed=2))
    write_split(data_dir, "test", keyword_rows(12, seed=3))
    (data_dir / "labels.json").write_text(json.dumps(["neg", "pos"]))
    torch.manual_seed(0)
    model = LLMEmbedForSequenceClassification.from_backbones(tiny_config(num_labels=2, id2label=ID2LABEL))
    out = tmp_path / "out"
    model, report = train_head(data_dir, out, model=model,
                               training=HeadTrainingArguments(epochs=2, batch_size=8, learning_rate=3e-3))

    def check_trained_card(text: str) -> None:
        data = check_card_metadata(text, tiny_backbones)
        (entry,) = data["model-index"]
        (result,) = entry["results"]
        assert result["task"]["type"] == "text-classification"
        assert result["dataset"]["split"] == "test"
        metrics = {m["type"]: m["value"] for m in result["metrics"]}
        assert metrics["accuracy"] == pytest.approx(report.eval_metrics["accuracy"], abs=1e-4)
        assert metrics["f1"] == pytest.approx(report.eval_metrics["macro_f1"], abs=1e-4)
        assert "this head is untrained" not in text
        assert "![confusion matrix](confusion_matrix.png)" in text
        assert "![training curves](training_curves.png)" in text

    check_trained_card((out / "README.md").read_text())
    for png in ("confusion_matrix.png", "training_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png

    # Pushing the trained model uploads that card (written for this repo id) with its plots; so does a head
    # reloaded from the folder, which finds its training_report.json there.
    model.push_to_hub(REPO_ID)
    AutoModelForSequenceClassification.from_pretrained(out).push_to_hub(REPO_ID)
    assert len(hub.commits) == 2
    for commit in hub.commits:
        text = commit.files["README.md"].decode()
        check_trained_card(text)
        assert f'from_pretrained("{REPO_ID}")' in text
        for png in ("confusion_matrix.png", "training_curves.png"):
            assert commit.files[png][:8] == b"\x89PNG\r\n\x1a\n", png
        assert json.loads(commit.files["training_report.json"])["eval_metrics"] == report.eval_metrics
        assert not [p for p in commit.files if p.startswith("checkpoints/")]


# ----------------------------------------------------------------------------------------------------------------------
# 3. Bad input
# ----------------------------------------------------------------------------------------------------------------------


def test_invalid_repo_id_fails_before_any_upload(tiny_config, hub):
    model = LLMEmbedForSequenceClassification.from_backbones(tiny_config())
    with pytest.raises(HFValidationError):
        model.push_to_hub("bad id!!")
    assert hub.repos == [] and hub.commits == [] and hub.validated_cards == []


@pytest.fixture
def saved_head(tiny_config, tmp_path) -> tuple[LLMEmbedForSequenceClassification, Path]:
    torch.manual_seed(0)
    model = LLMEmbedForSequenceClassification.from_backbones(tiny_config(num_labels=2, id2label=ID2LABEL)).eval()
    folder = tmp_path / "head"
    model.save_pretrained(folder)
    return model, folder


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(backbones=[]), r"backbones is empty"),
        (lambda c: c["backbones"][1].update(pooling="avg"), r"backbones\['enc'\]\.pooling='avg' is unknown.*'mean'"),
        (lambda c: c["backbones"][0].update(layer=[-1]), r"unknown field\(s\) \['layer'\] in spec 'llm'"),
    ],
    ids=["no-backbones", "unknown-pooling", "unknown-field"],
)
def test_pulled_config_with_a_bad_field_names_it(saved_head, edit, message):
    _, folder = saved_head
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message) as error:
        AutoModelForSequenceClassification.from_pretrained(folder)
    assert str(error.value).startswith(f"{folder}/config.json: ")  # names where the bad config came from


def test_other_num_labels_points_at_ignore_mismatched_sizes(saved_head):
    _, folder = saved_head
    with pytest.raises(Exception, match="ignore_mismatched_sizes"):
        AutoModelForSequenceClassification.from_pretrained(folder, num_labels=5)


def test_ignore_mismatched_sizes_gives_a_new_classifier(saved_head):
    model, folder = saved_head
    loaded = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=5, ignore_mismatched_sizes=True)
    assert loaded.config.num_labels == 5
    assert loaded.head.classifier[-1].out_features == 5
    assert torch.equal(loaded.head.classifier[0].weight, model.head.classifier[0].weight)


def test_missing_tokenizer_files_fall_back_to_the_backbones(saved_head, caplog):
    model, folder = saved_head
    (folder / "tokenizer_config.json").unlink()
    shutil.rmtree(folder / "tokenizers")
    with caplog.at_level(logging.WARNING):
        tokenizer = AutoTokenizer.from_pretrained(folder)
    assert isinstance(tokenizer, LLMEmbedTokenizer)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("has no LLMEmbedTokenizer files" in m and str(folder) in m for m in warnings), warnings
    expected, actual = model.tokenizer(TEXTS, return_tensors="pt"), tokenizer(TEXTS, return_tensors="pt")
    assert sorted(actual.keys()) == sorted(expected.keys())
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key
    # The pipeline over that folder works with the fallback tokenizer and agrees with the original model.
    assert_same_predictions(pipeline("text-classification", model=str(folder), device="cpu")(TEXTS),
                            pipeline_outputs(model, TEXTS))


# ----------------------------------------------------------------------------------------------------------------------
# 4. Remote code: torch + transformers only
# ----------------------------------------------------------------------------------------------------------------------


#: Loads each path with trust_remote_code; every step is attempted on its own and reports its error, if any.
REMOTE_CODE_SCRIPT = """
    import importlib.util, json, sys, traceback
    assert importlib.util.find_spec("llmembed_hf") is None, "llmembed_hf is importable"
    try:
        import llmembed_hf
    except ImportError as error:
        import_error = repr(error)
    else:
        raise AssertionError("import llmembed_hf worked")
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    texts, features = json.loads(sys.argv[1]), torch.tensor(json.loads(sys.argv[2]))
    reference_ids = {key: torch.tensor(value) for key, value in json.loads(sys.argv[3]).items()}

    def attempt(step):
        try:
            return {"result": step()}
        except Exception as error:
            return {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-4000:]}

    def load_model(path):
        return AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).eval()

    def model_step(path):
        model = load_model(path)
        with torch.no_grad():
            logits = model(pooled_features=features).logits
        return {"module": type(model).__module__, "logits": logits.tolist()}

    def model_text_step(path):
        # Tokenised text (ids from the in-package tokenizer): the remote model loads its backbones itself.
        with torch.no_grad():
            return {"logits": load_model(path)(**reference_ids).logits.tolist()}

    def tokenizer_step(path):
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        encoded = tokenizer(texts, return_tensors="pt")
        return {"module": type(tokenizer).__module__, "ids": {k: v.tolist() for k, v in encoded.items()}}

    def pipeline_step(path):
        classifier = pipeline("text-classification", model=path, trust_remote_code=True, device="cpu")
        return {"module": type(classifier.model).__module__, "predictions": classifier(texts)}

    results = {"import_error": import_error}
    steps = {"model": model_step, "model_text": model_text_step, "tokenizer": tokenizer_step,
             "pipeline": pipeline_step}
    for path in sys.argv[4:]:
        results[path] = {name: attempt(lambda: step(path)) for name, step in steps.items()}
    print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> Path:
    """A fresh venv that reaches the dev venv's packages (torch, transformers, ...) but not llmembed_hf.

    A path listed in a .pth file is appended to sys.path without processing *its* .pth files, so the editable
    finder of the dev install is never installed (the technique of test_wheel.py).
    """
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "dev_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.fixture(scope="module")
def remote_code(published, bare_python, tmp_path_factory) -> dict[str, Any]:
    """Results of the remote-code script on a folder saved by save_pretrained and on the repo id (HF cache)."""
    tmp = tmp_path_factory.mktemp("remote_code")
    folder = tmp / "saved"
    published.model.save_pretrained(folder)
    cache = tmp / "hf_cache"
    publish_to_hf_cache(cache, published.commit, ONLINE_LOAD_MISSING)
    ids = {k: v.tolist() for k, v in published.model.tokenizer(TEXTS, return_tensors="pt").items()}
    features = torch.randn(5, published.model.config.feature_size, generator=torch.Generator().manual_seed(2))
    out = run_script(bare_python, REMOTE_CODE_SCRIPT, json.dumps(TEXTS), json.dumps(features.tolist()),
                     json.dumps(ids), str(folder), REPO_ID, cwd=tmp / "elsewhere", env=offline_env(tmp, cache))
    assert "llmembed_hf" in out.pop("import_error")
    assert sorted(out) == sorted([str(folder), REPO_ID])
    return {"ids": ids, "features": features, "results": {"folder": out[str(folder)], "repo-id": out[REPO_ID]}}


WHERE = ("folder", "repo-id")


def step_result(remote_code: dict[str, Any], where: str, step: str) -> dict[str, Any]:
    """One step's result; an error in the bare venv fails the test."""
    outcome = remote_code["results"][where][step]
    if "error" in outcome:
        pytest.fail(f"{where} {step}: {outcome['error']}\n{outcome['traceback']}")
    return outcome["result"]


@pytest.mark.slow
@pytest.mark.parametrize("where", WHERE)
def test_remote_code_model_without_the_package(remote_code, published, where):
    result = step_result(remote_code, where, "model")
    assert result["module"].startswith("transformers_modules.") and result["module"].endswith(".modeling_llmembed")
    with torch.no_grad():
        reference = published.model(pooled_features=remote_code["features"]).logits
    torch.testing.assert_close(torch.tensor(result["logits"]), reference, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("where", WHERE)
def test_remote_code_model_on_text_without_the_package(remote_code, published, where):
    result = step_result(remote_code, where, "model_text")
    with torch.no_grad():
        reference = published.model(**{k: torch.tensor(v) for k, v in remote_code["ids"].items()}).logits
    torch.testing.assert_close(torch.tensor(result["logits"]), reference, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("where", WHERE)
def test_remote_code_tokenizer_without_the_package(remote_code, where):
    result = step_result(remote_code, where, "tokenizer")
    assert result["module"].startswith("transformers_modules.")
    assert result["module"].endswith(".tokenization_llmembed")
    assert result["ids"] == remote_code["ids"]


@pytest.mark.slow
@pytest.mark.parametrize("where", WHERE)
def test_remote_code_pipeline_without_the_package(remote_code, published, where):
    result = step_result(remote_code, where, "pipeline")
    assert result["module"].startswith("transformers_modules.")
    assert_same_predictions(result["predictions"], published.expected)
