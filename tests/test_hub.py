"""push_to_hub and loading by repo id, without a Hub.

`HfApi.create_repo` and the commit boundary of `HfApi.upload_folder` are replaced by fakes that capture the
uploaded files (helpers.install_fake_hub; conftest's ``published`` pushes a tiny fitted head once); those files are
then laid out as a Hugging Face cache snapshot, so ``from_pretrained("org/name")`` with ``HF_HUB_OFFLINE=1`` reads
exactly what would have been pushed. The remote code is loaded by a Python that cannot import llmembed_hf.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub.utils import HFValidationError
from safetensors.torch import load as load_safetensors

import llmembed_hf.modeling.modeling_llmembed as modeling
from helpers import CODE_FILES, PUBLISHED_TEXTS as TEXTS, REPO_ID, Commit, assert_same_predictions
from llmembed_hf import LLMEmbedForSequenceClassification

MODELING_DIR = Path(modeling.__file__).parent
REMOTE_CODE_FILES = ("configuration_llmembed.py", "modeling_llmembed.py", "tokenization_llmembed.py")


# ----------------------------------------------------------------------------------------------------------------------
# Laying out a pushed commit as the HF cache holds it; running a script in a fresh offline process
# ----------------------------------------------------------------------------------------------------------------------


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

    # No path of this machine is uploaded, except the tiny backbones' own folders, which the config needs to load.
    backbone_folders = {tiny_backbones["llama"], tiny_backbones["bert"]}
    for name, content in files.items():
        if name.endswith((".json", ".md")):
            text = content.decode()
            for folder in re.findall(r"/tmp/[^\s\"'`|)]+", text):
                assert folder in backbone_folders, (name, folder)

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
# 2. Bad input
# ----------------------------------------------------------------------------------------------------------------------


def test_invalid_repo_id_fails_before_any_upload(tiny_config, hub):
    model = LLMEmbedForSequenceClassification.from_backbones(tiny_config())
    with pytest.raises(HFValidationError):
        model.push_to_hub("bad id!!")
    assert hub.repos == [] and hub.commits == [] and hub.validated_cards == []


# ----------------------------------------------------------------------------------------------------------------------
# 3. The intent + slot model
# ----------------------------------------------------------------------------------------------------------------------


def test_push_to_hub_uploads_one_commit_with_card_and_trained_weights(make_model, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoUrl

    uploads: list[dict[str, Any]] = []

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploads.append({"repo_id": repo_id, "files": sorted(os.listdir(folder_path)),
                        "card": Path(folder_path, "README.md").read_text(), **kwargs})
        return "commit"

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    model = make_model("llama", "lora")
    assert model.push_to_hub("org/nlu") == "commit"
    (upload,) = uploads
    assert upload["repo_id"] == "org/nlu" and upload["commit_message"] == "Upload LLMEmbed intent + slot model"
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json", *CODE_FILES} <= set(upload["files"])
    assert "untrained" in upload["card"] and 'pipeline("intent-slot-filling", model="org/nlu")' in upload["card"]


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
