"""The Hub round trip, over real HTTP against a local Hub server (this machine cannot reach huggingface.co).

A session fixture starts `olah` (a self-hosted Hub mirror, PyPI) on 127.0.0.1 in offline mode, serving git
repositories laid out as ``MIRRORS/models/ORG/NAME`` (branch ``main``). ``HF_ENDPOINT`` points the client at
it, so ``from_pretrained("ORG/NAME", trust_remote_code=True)`` downloads config, code, weights and tokenizer
through huggingface_hub exactly as from the Hub.

olah 0.5.4 answers a request for a file (or folder) that a local mirror repo does not have with 401
``RepoNotFound``, where the Hub answers 404 ``EntryNotFound`` (and 404 ``RevisionNotFound`` for an unknown
revision); transformers probes optional files (``adapter_config.json``, ``additional_chat_templates/``, ...)
and would fail on the 401. The launcher below rewrites those answers into the Hub's (and resolves ``main``
from the mirror for ``/api/models/ORG/NAME``); everything else is olah's own code.

olah does not accept uploads: pushes run the real transformers / huggingface_hub code, and the commit the
client builds is captured at ``HfApi.create_commit`` (``create_repo`` / ``create_branch`` likewise) and
written as a git commit into the mirror, from where it is pulled back over HTTP.

The pulling side runs in a fresh interpreter in which ``import qrm_hf`` fails, as on a machine without
qrm-hf: only the code files downloaded from the repo can build the model.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi, RepoUrl
from huggingface_hub.errors import HFValidationError
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast

from conftest import make_qrm
from qrm_hf import QRMForSequenceClassification, hub
from qrm_hf.cli_push import add_push_command
from qrm_hf.model_cards import ModelCardTemplateError, render_model_card
from qrm_hf.training.assemble import push_qrm, save_qrm

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELING_DIR = REPO_ROOT / "modeling"

CONVERSATIONS = [
    [{"role": "user", "content": "w11 w12 w13"}, {"role": "assistant", "content": "w20 w21"}],
    [{"role": "user", "content": "w40"}, {"role": "assistant", "content": "w50 w51 w52 w53 w11"}],
]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %} <|start|> assistant <|sep|> "
    "{{ m['content'] }} <|end|>{% else %} <|user|> {{ m['content'] }} <|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} <|start|> assistant <|sep|>{% endif %}"
)


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the tiny backbone's 64 ids: <|start|> assistant <|sep|> are ids 7, 8, 9
    (conftest.PATTERN), so the chat template opens the assistant turn with the model's gating pattern."""
    words = [
        "<pad>",
        "<s>",
        "</s>",
        "<unk>",
        "<|user|>",
        "<|system|>",
        "<|end|>",
        "<|start|>",
        "assistant",
        "<|sep|>",
    ]
    words += [f"w{i}" for i in range(10, 64)]
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def expected_outputs(model, tokenizer) -> list[dict]:
    results = []
    for messages in CONVERSATIONS:
        inputs = tokenizer.apply_chat_template(messages, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        results.append(
            {
                "ids": inputs["input_ids"][0].tolist(),
                "logits": out.logits[0].tolist(),
                "reward_quantiles": out.reward_quantiles[0].tolist(),
                "attribute_quantiles": out.attribute_quantiles[0].tolist(),
                "gating_output": out.gating_output[0].tolist(),
            }
        )
    return results


def assert_same_outputs(pulled: list[dict], expected: list[dict]) -> None:
    assert len(pulled) == len(expected)
    for got, want in zip(pulled, expected, strict=True):
        assert got["ids"] == want["ids"]  # the downloaded tokenizer and chat template tokenize alike
        for key in ("logits", "reward_quantiles", "attribute_quantiles", "gating_output"):
            torch.testing.assert_close(torch.tensor(got[key]), torch.tensor(want[key]), rtol=1e-5, atol=1e-5)


def assert_different_outputs(a: list[dict], b: list[dict]) -> None:
    assert not torch.allclose(torch.tensor(a[0]["reward_quantiles"]), torch.tensor(b[0]["reward_quantiles"]))


# --- git mirror --------------------------------------------------------------------------------------

GIT_ENV = dict(
    os.environ,
    GIT_AUTHOR_NAME="qrm-hf tests",
    GIT_AUTHOR_EMAIL="tests@qrm-hf.invalid",
    GIT_COMMITTER_NAME="qrm-hf tests",
    GIT_COMMITTER_EMAIL="tests@qrm-hf.invalid",
    GIT_CONFIG_NOSYSTEM="1",
    GIT_CONFIG_GLOBAL=os.devnull,
)


def git(repo: Path, *args: str, data: bytes | None = None, env: dict | None = None) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), *args], input=data, capture_output=True, env=env or GIT_ENV, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.decode()}")
    return result.stdout.decode().strip()


def git_init(repo: Path) -> str:
    """A new Hub-like repo: branch main with one commit holding .gitattributes (as the Hub creates it)."""
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    return git_commit(
        repo, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}, [], "initial commit"
    )


def git_commit(
    repo: Path, adds: dict[str, bytes], deletes: list[str], message: str, branch: str = "main"
) -> str:
    """Commit `adds` (path -> bytes) and `deletes` (paths or folders) on `branch` with git plumbing."""
    env = dict(GIT_ENV, GIT_INDEX_FILE=str(repo / ".git" / "qrm-tests-index"))
    parent = (
        subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--verify", "-q", f"refs/heads/{branch}"],
            capture_output=True,
            env=env,
            check=False,
        )
        .stdout.decode()
        .strip()
    )
    git(repo, "read-tree", parent or "--empty", env=env)
    for path in deletes:
        for tracked in git(repo, "ls-files", "--", path, env=env).splitlines():
            git(repo, "update-index", "--force-remove", "--", tracked, env=env)
    for path, data in adds.items():
        blob = git(repo, "hash-object", "-w", "--stdin", data=data, env=env)
        git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
    tree = git(repo, "write-tree", env=env)
    commit = git(repo, "commit-tree", tree, *(["-p", parent] if parent else []), "-m", message, env=env)
    git(repo, "update-ref", f"refs/heads/{branch}", commit, env=env)
    return commit


def commit_directory(repo: Path, directory: Path, message: str) -> str:
    files = {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
    return git_commit(repo, files, [], message)


def files_at(repo: Path, revision: str) -> set[str]:
    return set(git(repo, "ls-tree", "-r", "--name-only", revision).splitlines())


# --- the local Hub server ----------------------------------------------------------------------------

OLAH_LAUNCHER = r'''
import os
import sys

import git
import olah.server as server
import olah.server_api_routes as api_routes
import olah.server_file_routes as file_routes
from olah.errors import error_entry_not_found_branch, error_revision_not_found
from olah.server_mirror import _mirror_git_paths


def mirror_commit(app, repo_ref, revision):
    """None: not a local mirror repo; "": the mirror has no such revision; else its commit id."""
    paths = [path for path in _mirror_git_paths(app, repo_ref) if os.path.isdir(path)]
    if not paths:
        return None
    for path in paths:
        try:
            commit = git.Repo(path).commit(revision)
            commit.tree  # full commit ids resolve lazily
            return commit.hexsha
        except Exception:
            continue
    return ""


def hub_like_errors(original):
    """olah answers 401 RepoNotFound for a missing file or revision of a local mirror; the Hub 404s."""

    async def wrapper(app, **kwargs):
        response = await original(app, **kwargs)
        if response.status_code == 401:
            repo_ref = api_routes.build_repo_ref(kwargs["repo_type"], kwargs["org"], kwargs["repo"])
            commit = mirror_commit(app, repo_ref, kwargs["commit"])
            if commit == "":
                return error_revision_not_found(kwargs["commit"])
            if commit is not None:
                path = kwargs.get("file_path", kwargs.get("path", ""))
                return error_entry_not_found_branch(kwargs["commit"], path)
        return response

    return wrapper


upstream_latest_commit = api_routes.get_latest_commit


async def latest_commit(app, repo_ref, authorization):
    return mirror_commit(app, repo_ref, "main") or await upstream_latest_commit(app, repo_ref, authorization)


file_routes.file_head_common = hub_like_errors(file_routes.file_head_common)
file_routes.file_get_common = hub_like_errors(file_routes.file_get_common)
api_routes.tree_proxy_common = hub_like_errors(api_routes.tree_proxy_common)
api_routes.meta_proxy_common = hub_like_errors(api_routes.meta_proxy_common)
api_routes.get_latest_commit = latest_commit
sys.argv = ["olah-cli", *sys.argv[1:]]
server.cli()
'''


class LocalHub:
    def __init__(self, root: Path, url: str):
        self.root, self.url = root, url
        self.mirrors = root / "mirrors"
        self.home = root / "hf_home"

    def repo_path(self, repo_id: str) -> Path:
        return self.mirrors / "models" / repo_id

    def client_env(self, offline: bool = False) -> dict:
        """Environment of a process that talks to this server (or, offline, only to its cache)."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")
        }
        env.update(
            HF_ENDPOINT=self.url,
            HF_HOME=str(self.home),
            HF_HUB_CACHE=str(self.home / "hub"),
            HF_MODULES_CACHE=str(self.home / "modules"),
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
            TOKENIZERS_PARALLELISM="false",
        )
        if offline:
            env["HF_HUB_OFFLINE"] = "1"
        return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def local_hub(tmp_path_factory):
    """olah on 127.0.0.1:<free port>, offline, serving the git repos under `mirrors/`; stopped at the end."""
    try:
        import olah  # noqa: F401
    except ImportError:
        pytest.skip("olah (the local Hub server of these tests) is not installed: pip install olah")
    if shutil.which("git") is None:
        pytest.skip("git is needed to lay out the local Hub's repositories")
    root = tmp_path_factory.mktemp("local_hub")
    (root / "mirrors" / "models").mkdir(parents=True)
    port = _free_port()
    config = root / "olah.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [basic]
            host = "127.0.0.1"
            port = {port}
            repos-path = "{root / "olah_cache"}"
            mirrors-path = ["{root / "mirrors"}"]
            metadata-cache-ttl = 0

            [accessibility]
            offline = true
            """
        )
    )
    launcher = root / "launch_olah.py"
    launcher.write_text(OLAH_LAUNCHER)
    log = open(root / "olah.log", "wb")  # noqa: SIM115  (closed at teardown)
    process = subprocess.Popen(
        [sys.executable, str(launcher), "--config", str(config), "--log-path", str(root / "logs")],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),  # the request log is read by the offline test
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/models/none/none/revision/main", timeout=2)
            break
        except urllib.error.HTTPError:
            break  # the server answers
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                log.close()
                raise RuntimeError(f"olah did not start: {(root / 'olah.log').read_text()[-3000:]}") from None
            time.sleep(0.2)
    try:
        yield LocalHub(root, url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def hub_writes(local_hub, monkeypatch, tmp_path):
    """This process talks to the local Hub; its repo creations and commits land in the mirror's git repos.

    Reads (model card, repo file listings) go over HTTP to olah. `create_repo`, `create_branch` and
    `create_commit` are the only HfApi calls replaced: they write what the client built into git.
    """
    from huggingface_hub import constants
    from transformers.utils import hub as transformers_hub

    monkeypatch.setattr(constants, "ENDPOINT", local_hub.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", local_hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "push_cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
    monkeypatch.setattr(transformers_hub, "_hf_api", None)  # its shared HfApi picks up the endpoint again
    calls = {"create_repo": [], "create_branch": [], "create_commit": []}

    def create_repo(self, repo_id, *, token=None, private=None, repo_type=None, exist_ok=False, **kwargs):
        calls["create_repo"].append(dict(repo_id=repo_id, private=private, exist_ok=exist_ok))
        repo_id = repo_id if "/" in repo_id else f"qrm-tester/{repo_id}"
        path = local_hub.repo_path(repo_id)
        if not path.exists():
            git_init(path)
        elif not exist_ok:
            raise RuntimeError(f"{repo_id} exists")
        return RepoUrl(f"{local_hub.url}/{repo_id}", endpoint=local_hub.url)

    def create_branch(self, repo_id, *, branch, revision=None, token=None, repo_type=None, exist_ok=False):
        calls["create_branch"].append(dict(repo_id=repo_id, branch=branch, revision=revision))
        path = local_hub.repo_path(repo_id)
        if git(path, "branch", "--list", branch):
            if not exist_ok:
                raise RuntimeError(f"branch {branch} exists")
            return
        git(path, "branch", branch, revision or "main")

    def create_commit(
        self, repo_id, operations, *, commit_message, commit_description=None, revision=None, **kwargs
    ):
        operations = list(operations)
        calls["create_commit"].append(
            dict(repo_id=repo_id, operations=operations, revision=revision, message=commit_message)
        )
        adds, deletes = {}, []
        for operation in operations:
            if isinstance(operation, CommitOperationAdd):
                with operation.as_file() as handle:
                    adds[operation.path_in_repo] = handle.read()
            elif isinstance(operation, CommitOperationDelete):
                deletes.append(operation.path_in_repo)
            else:
                raise NotImplementedError(type(operation).__name__)
        message = commit_message + (f"\n\n{commit_description}" if commit_description else "")
        oid = git_commit(local_hub.repo_path(repo_id), adds, deletes, message, branch=revision or "main")
        return CommitInfo(
            commit_url=f"{local_hub.url}/{repo_id}/commit/{oid}",
            commit_message=commit_message,
            commit_description=commit_description or "",
            oid=oid,
            _endpoint=local_hub.url,
        )

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return calls


# --- the pulling side --------------------------------------------------------------------------------

BLOCK_QRM_HF = """
import sys

class _NoQrmHf:
    def find_spec(self, name, path=None, target=None):
        if name == "qrm_hf" or name.startswith("qrm_hf."):
            raise ImportError("qrm_hf is blocked in this process")

sys.meta_path.insert(0, _NoQrmHf())
"""

PULL_SCRIPT = r"""
import json
import sys

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

spec = json.loads(sys.argv[1])
results = []
for load in spec["loads"]:
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            spec["repo_id"], trust_remote_code=True, use_safetensors=True,
            revision=load.get("revision"), code_revision=load.get("code_revision"),
        ).eval()
        tokenizer = AutoTokenizer.from_pretrained(spec["repo_id"], trust_remote_code=True, revision=load.get("revision"))
    except Exception as error:
        results.append({"error": f"{type(error).__name__}: {error}"})
        continue
    outputs = []
    for messages in spec["conversations"]:
        inputs = tokenizer.apply_chat_template(messages, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        outputs.append({
            "ids": inputs["input_ids"][0].tolist(),
            "logits": out.logits[0].tolist(),
            "reward_quantiles": out.reward_quantiles[0].tolist(),
            "attribute_quantiles": out.attribute_quantiles[0].tolist(),
            "gating_output": out.gating_output[0].tolist(),
        })
    results.append({"module": type(model).__module__, "outputs": outputs})
results.append({"qrm_hf_imported": any(name.split(".")[0] == "qrm_hf" for name in sys.modules)})
print("RESULTS " + json.dumps(results))
"""


def run_client(
    local_hub: LocalHub,
    script: str,
    args: list[str],
    tmp_path: Path,
    offline: bool = False,
    block_qrm_hf: bool = True,
):
    path = tmp_path / f"client_{len(list(tmp_path.glob('client_*.py')))}.py"
    path.write_text((BLOCK_QRM_HF if block_qrm_hf else "") + script)
    return subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        env=local_hub.client_env(offline=offline),
        timeout=300,
        cwd=tmp_path,
    )


def pull(
    local_hub: LocalHub, repo_id: str, loads: list[dict], tmp_path: Path, offline: bool = False
) -> list[dict]:
    """Load `repo_id` at each of `loads` ({revision, code_revision}) in a process without qrm_hf."""
    spec = json.dumps({"repo_id": repo_id, "loads": loads, "conversations": CONVERSATIONS})
    result = run_client(local_hub, PULL_SCRIPT, [spec], tmp_path, offline=offline)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULTS ")]
    assert result.returncode == 0 and lines, result.stdout[-3000:] + result.stderr[-5000:]
    *loaded, status = json.loads(lines[-1][len("RESULTS ") :])
    assert status == {"qrm_hf_imported": False}
    return loaded


def saved_qrm(
    directory: Path, seed: int, max_shard_size: str | None = None, card_repo_id: str | None = None
) -> tuple:
    """A tiny QRM with its tokenizer and card in `directory`; returns (model, tokenizer, directory)."""
    model, tokenizer = make_qrm(seed=seed), make_tokenizer()
    if max_shard_size is None and card_repo_id is None:
        save_qrm(
            model,
            directory,
            tokenizer=tokenizer,
            backbone_name="tiny-llama",
            training_summary=f"Seed {seed}.",
        )
    else:
        model.save_pretrained(directory, max_shard_size=max_shard_size or "5GB")
        tokenizer.save_pretrained(directory)
        render_model_card(model.config, base_model="tiny-llama", repo_id=card_repo_id).save(
            directory / "README.md"
        )
    return model, tokenizer, directory


# --- pull over HTTP ----------------------------------------------------------------------------------


def test_pull_by_repo_id_over_http_with_revisions_and_offline_cache(local_hub, tmp_path):
    repo_id = "qrm-org/pulled-qrm"
    repo = local_hub.repo_path(repo_id)
    git_init(repo)
    model_1, tokenizer, dir_1 = saved_qrm(tmp_path / "v1", seed=1)
    sha_1 = commit_directory(repo, dir_1, "first heads")
    model_2, _, dir_2 = saved_qrm(tmp_path / "v2", seed=2)
    sha_2 = commit_directory(repo, dir_2, "refitted heads")
    expected_1, expected_2 = expected_outputs(model_1, tokenizer), expected_outputs(model_2, tokenizer)
    assert_different_outputs(expected_1, expected_2)

    main, pinned_1, pinned_code, missing = pull(
        local_hub,
        repo_id,
        [
            {},
            {"revision": sha_1},
            {"revision": sha_2, "code_revision": sha_1},
            {"revision": "no-such-branch"},
        ],
        tmp_path,
    )
    assert_same_outputs(main["outputs"], expected_2)  # main is the latest commit
    assert_same_outputs(pinned_1["outputs"], expected_1)
    # the class comes from the code files downloaded from the repo, at the pinned code revision
    assert main["module"].startswith("transformers_modules.") and main["module"].endswith(".modeling_qrm")
    assert sha_1 in pinned_code["module"] and sha_2 not in pinned_code["module"]
    assert_same_outputs(pinned_code["outputs"], expected_2)
    # an unknown revision: the client's own error, naming the revision and the repo
    assert "no-such-branch" in missing["error"] and repo_id in missing["error"]

    # HF_HUB_OFFLINE=1: the same loads come from the cache, no request reaches the server
    assert f"/{repo_id}/resolve/{sha_1}/model.safetensors" in (local_hub.root / "olah.log").read_text()
    log_size = (local_hub.root / "olah.log").stat().st_size
    cached_main, cached_1 = pull(local_hub, repo_id, [{}, {"revision": sha_1}], tmp_path, offline=True)
    assert_same_outputs(cached_main["outputs"], expected_2)
    assert_same_outputs(cached_1["outputs"], expected_1)
    new_log = (local_hub.root / "olah.log").read_bytes()[log_size:].decode(errors="replace")
    assert "/qrm-org/pulled-qrm/" not in new_log and "/api/models/qrm-org" not in new_log


def test_qrm_score_by_repo_id_over_http(local_hub, tmp_path, capsys):
    from qrm_hf.cli import main as qrm_main

    repo_id = "qrm-org/scored-qrm"
    git_init(local_hub.repo_path(repo_id))
    _, _, directory = saved_qrm(tmp_path / "model", seed=5)
    commit_directory(local_hub.repo_path(repo_id), directory, "upload")
    score_args = ["score", "--prompt", "w11 w12 w13", "--response", "w20 w21"]
    script = textwrap.dedent(
        """
        import sys
        from qrm_hf.cli import main
        from qrm_hf.hub import load_qrm

        main(sys.argv[1:])
        try:
            load_qrm(sys.argv[2], revision="no-such-branch")
        except OSError as error:
            print("LOAD ERROR", error)
        """
    )
    result = run_client(
        local_hub, script, [*score_args[:1], repo_id, *score_args[1:]], tmp_path, block_qrm_hf=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    remote_table, _, load_error = result.stdout.partition("LOAD ERROR")
    qrm_main([score_args[0], str(directory), *score_args[1:]])
    local_table = capsys.readouterr().out
    assert local_table.strip() and local_table.strip() in remote_table  # same numbers from the Hub copy
    assert f"Cannot load the QRM {repo_id!r} at revision 'no-such-branch'" in load_error


# --- push over the real client code, pulled back over HTTP -------------------------------------------


def test_push_then_pull_round_trip_with_revision_pinning(local_hub, hub_writes, tmp_path, capsys):
    repo_id = "qrm-org/pushed-qrm"
    repo = local_hub.repo_path(repo_id)

    # v1: push_qrm renders the card for this repo, saves model + tokenizer and pushes them in one commit
    model_1, tokenizer = make_qrm(seed=11), make_tokenizer()
    info_1 = push_qrm(
        model_1,
        repo_id,
        tokenizer,
        base_model="tiny-llama",
        evaluation=[{"dataset": "qrm-org/heldout-pairs", "metric": "accuracy", "value": 0.5}],
    )
    files_1 = files_at(repo, info_1.oid)
    assert {"model.safetensors", "config.json", "configuration_qrm.py", "modeling_qrm.py"} <= files_1
    assert {"tokenizer.json", "tokenizer_config.json", "README.md"} <= files_1
    config = json.loads(git(repo, "show", f"{info_1.oid}:config.json"))
    assert config["model_type"] == "qrm"
    assert (
        config["auto_map"]["AutoModelForSequenceClassification"]
        == "modeling_qrm.QRMForSequenceClassification"
    )
    assert (
        git(repo, "show", f"{info_1.oid}:modeling_qrm.py")
        == (MODELING_DIR / "modeling_qrm.py").read_text().strip()
    )
    card = git(repo, "show", f"{info_1.oid}:README.md")
    assert f'from_pretrained("{repo_id}"' in card and "model-index" in card and "value: 0.5" in card

    # v2: `qrm push` of a directory with sharded weights and a card rendered without repo id, to main
    model_2, _, dir_2 = saved_qrm(tmp_path / "v2", seed=12, max_shard_size="40KB")
    assert (dir_2 / "model.safetensors.index.json").exists()
    parser = argparse.ArgumentParser(prog="qrm")
    add_push_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["push", str(dir_2), repo_id, "--private", "--commit-message", "Sharded v2"])
    args.handler(args)
    printed = capsys.readouterr().out
    sha_2 = git(repo, "rev-parse", "main")
    assert sha_2 in printed and f"trust_remote_code=True, revision='{sha_2}'" in printed
    assert hub_writes["create_repo"][-1] == dict(repo_id=repo_id, private=True, exist_ok=True)
    assert git(repo, "log", "-1", "--format=%s", sha_2) == "Sharded v2"
    files_2 = files_at(repo, sha_2)
    assert "model.safetensors" not in files_2  # the stale single file of v1 was deleted in the same commit
    index = json.loads(git(repo, "show", f"{sha_2}:model.safetensors.index.json"))
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and shards <= files_2
    card_2 = git(repo, "show", f"{sha_2}:README.md")
    assert f'"{repo_id}"' in card_2 and "path/to/this/model" not in card_2 and "# pushed-qrm" in card_2

    # v3: the inherited transformers `push_to_hub` (weights, config with auto_map and the code files; it
    # keeps the card already in the repo, which it reads over HTTP)
    model_3 = make_qrm(seed=13)
    info_3 = model_3.push_to_hub(repo_id, commit_message="plain push_to_hub")
    files_3 = files_at(repo, info_3.oid)
    assert {"model.safetensors", "config.json", "configuration_qrm.py", "modeling_qrm.py"} <= files_3
    assert git(repo, "show", f"{info_3.oid}:README.md").strip() == card_2.strip()

    expected = [expected_outputs(m, tokenizer) for m in (model_1, model_2, model_3)]
    assert_different_outputs(expected[0], expected[1])
    assert_different_outputs(expected[1], expected[2])
    pulled = pull(
        local_hub,
        repo_id,
        [{"revision": info_1.oid}, {"revision": sha_2}, {"revision": info_3.oid}, {}],
        tmp_path,
    )
    for got, want in zip(pulled, [*expected, expected[2]], strict=True):
        assert_same_outputs(got["outputs"], want)


def test_push_to_a_branch_leaves_main_alone(local_hub, hub_writes, tmp_path):
    repo_id = "qrm-org/branched-qrm"
    _, _, directory = saved_qrm(tmp_path / "model", seed=21)
    info_main = hub.push_model_dir(directory, repo_id)
    _, _, refit = saved_qrm(tmp_path / "refit", seed=22)
    info_dev = hub.push_model_dir(refit, repo_id, revision="dev", commit_message="Refit on dev")
    repo = local_hub.repo_path(repo_id)
    assert git(repo, "rev-parse", "main") == info_main.oid
    assert git(repo, "rev-parse", "dev") == info_dev.oid
    assert git(repo, "rev-parse", f"{info_dev.oid}^") == info_main.oid  # the branch starts from main
    assert hub_writes["create_branch"] == [dict(repo_id=repo_id, branch="dev", revision=None)]
    changed = set(git(repo, "diff", "--name-only", info_main.oid, info_dev.oid).splitlines())
    assert "model.safetensors" in changed and "README.md" in changed  # new heads, new training summary


# --- bad input ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def complete_dir(tmp_path_factory):
    _, _, directory = saved_qrm(tmp_path_factory.mktemp("complete") / "model", seed=31)
    return directory


@pytest.fixture
def model_dir(complete_dir, tmp_path):
    return Path(shutil.copytree(complete_dir, tmp_path / "model"))


@pytest.fixture
def no_hub_calls(monkeypatch):
    """Bad input is refused before any request: every HfApi call that could reach a server fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a Hub call was made for bad input")

    for name in ("create_repo", "create_branch", "create_commit", "list_repo_files", "upload_folder"):
        monkeypatch.setattr(HfApi, name, forbidden)


@pytest.mark.parametrize(
    "removed, named",
    [
        ("modeling_qrm.py", "modeling_qrm.py"),
        ("configuration_qrm.py", "configuration_qrm.py"),
        ("config.json", "config.json"),
        ("model.safetensors", "model.safetensors"),
        ("tokenizer_config.json", "tokenizer_config.json"),
        ("tokenizer.json", "tokenizer.json"),
        ("README.md", "README.md"),
    ],
)
def test_push_refuses_an_incomplete_directory(model_dir, no_hub_calls, removed, named):
    (model_dir / removed).unlink()
    with pytest.raises(hub.IncompleteModelDirError, match=rf"missing {named}"):
        hub.push_model_dir(model_dir, "qrm-org/incomplete")


def test_push_names_a_missing_shard(tmp_path, no_hub_calls):
    _, _, directory = saved_qrm(tmp_path / "sharded", seed=32, max_shard_size="40KB")
    shard = sorted(directory.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(hub.IncompleteModelDirError, match=rf"{shard.name} \(a shard listed in"):
        hub.push_model_dir(directory, "qrm-org/incomplete")


def test_push_refuses_wrong_files(model_dir, no_hub_calls):
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "training_args.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match=r"pickle files \(training_args.bin\)"):
        hub.push_model_dir(model_dir, "qrm-org/bad")
    (model_dir / "training_args.bin").unlink()
    (model_dir / "config.json").write_text(json.dumps(dict(config, model_type="llama")))
    with pytest.raises(ValueError, match="model_type 'llama', not 'qrm'.*qrm convert"):
        hub.push_model_dir(model_dir, "qrm-org/bad")
    (model_dir / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "auto_map"}))
    with pytest.raises(
        ValueError, match="no auto_map entry for AutoConfig, AutoModelForSequenceClassification"
    ):
        hub.push_model_dir(model_dir, "qrm-org/bad")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        hub.push_model_dir(model_dir / "nowhere", "qrm-org/bad")


@pytest.mark.parametrize(
    "repo_id", ["qrm org/model", "a/b/c", "org/..model", "org/model--x", "-org/model", "", "org/" + "x" * 100]
)
def test_push_refuses_a_malformed_repo_id(model_dir, no_hub_calls, repo_id):
    with pytest.raises(HFValidationError, match="not a valid Hub repo id|repo id is empty"):
        hub.push_model_dir(model_dir, repo_id)


def test_push_refuses_a_symbolic_link_out_of_the_directory_before_any_hub_call(
    model_dir, no_hub_calls, tmp_path
):
    """A link to a private file (or folder) outside the model directory is never uploaded."""
    secret = tmp_path / "hf_token"
    secret.write_text("hf_private")
    (model_dir / "notes.txt").symlink_to(secret)
    parser = argparse.ArgumentParser(prog="qrm")
    add_push_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["push", str(model_dir), "qrm-org/model"])
    with pytest.raises(ValueError) as error:
        args.handler(args)
    message = str(error.value)
    assert "notes.txt is a symbolic link to" in message and str(secret) in message and "\n" not in message
    (model_dir / "notes.txt").unlink()
    (model_dir / "extra").symlink_to(tmp_path, target_is_directory=True)  # a folder around the model
    with pytest.raises(ValueError, match="extra is a symbolic link"):
        hub.push_model_dir(model_dir, "qrm-org/model")
    (model_dir / "extra").unlink()
    (model_dir / "vocab_copy.json").symlink_to(model_dir / "tokenizer.json")  # inside: uploaded as a file
    assert "vocab_copy.json" in hub._local_files(model_dir)


def test_push_cli_reports_bad_input_without_traceback(model_dir, no_hub_calls, capsys):
    from qrm_hf.cli import main

    (model_dir / "modeling_qrm.py").unlink()
    for argv, expected in (
        (["push", str(model_dir), "qrm-org/model"], "qrm push: error: .* missing modeling_qrm.py"),
        (["push", str(model_dir.parent / "elsewhere"), "not a repo"], "qrm push: error: "),
    ):
        with pytest.raises(SystemExit) as exit:
            main(argv)
        err = capsys.readouterr().err
        assert exit.value.code == 2 and len(err.strip().splitlines()) == 1, err
        assert re.match(expected, err), err


def test_push_cli_help(capsys):
    parser = argparse.ArgumentParser(prog="qrm")
    add_push_command(parser.add_subparsers(dest="command", required=True))
    with pytest.raises(SystemExit):
        parser.parse_args(["push", "--help"])
    text = capsys.readouterr().out
    for expected in (
        "MODEL_DIR",
        "REPO_ID",
        "--private",
        "--revision BRANCH",
        "--commit-message",
        "trust_remote_code",
    ):
        assert expected in text


def test_card_template_with_a_missing_field_is_an_error(tmp_path):
    config = make_qrm().config
    template = tmp_path / "card.md"
    template.write_text(
        "---\n{{ card_data }}\n---\n# {{ model_name }}\n\nTrained on {{ training_data_size }} rows.\n"
    )
    with pytest.raises(
        ModelCardTemplateError, match="training_data_size.*Available fields: .*attribute_names"
    ):
        render_model_card(config, template_path=template)
    template.write_text("# {{ model_name }}\n")
    with pytest.raises(ModelCardTemplateError, match="no metadata block"):
        render_model_card(config, template_path=template)


def test_load_qrm_refuses_pickle_weights(tmp_path):
    model = make_qrm(seed=41)
    model.save_pretrained(tmp_path)
    make_tokenizer().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="Cannot load the QRM .* at revision 'main'.*model.safetensors"):
        hub.load_qrm(tmp_path)


# --- security of the remote code ---------------------------------------------------------------------

ALLOWED_MODULES = {"torch", "transformers", "typing", "dataclasses", "math", "numbers", "copy", "__future__"}
SIBLINGS = {"configuration_qrm", "modeling_qrm"}
# builtins that run code or touch files, and modules reachable without an import statement
FORBIDDEN_NAMES = {"eval", "exec", "compile", "open", "__import__", "input", "breakpoint", "globals", "vars"}
FORBIDDEN_NAMES |= {
    "os",
    "sys",
    "io",
    "subprocess",
    "socket",
    "urllib",
    "requests",
    "http",
    "httpx",
    "pickle",
}
FORBIDDEN_NAMES |= {"shutil", "pathlib", "importlib", "builtins"}
# torch's own ways to unpickle, save or download
FORBIDDEN_TORCH = {"load", "save", "hub", "jit", "package"}
FORBIDDEN_ATTRIBUTES = {
    "system",
    "popen",
    "urlopen",
    "exec",
    "write_text",
    "write_bytes",
    "load_state_dict_from_url",
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def remote_code_violations(source: str, filename: str) -> list[str]:
    """What in `source` goes beyond torch/transformers/typing/dataclasses/math and the sibling code file:
    other imports, eval/exec/open and friends, torch.load/save/hub, use_safetensors other than True, URLs
    and pickle file names (docstrings aside)."""
    found, tree = [], ast.parse(source, filename)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] not in ALLOWED_MODULES or (
                    parts[0] == "torch" and set(parts[1:]) & FORBIDDEN_TORCH
                ):
                    found.append(f"{where} import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            parts = module.split(".")
            names = {alias.name for alias in node.names}
            if node.level > 0:  # relative: only the sibling code file
                if module not in SIBLINGS:
                    found.append(f"{where} from {'.' * node.level}{module} import ...")
            elif parts[0] not in ALLOWED_MODULES:
                found.append(f"{where} from {module} import ...")
            elif parts[0] == "torch" and (set(parts[1:]) | names) & FORBIDDEN_TORCH:
                found.append(f"{where} from {module} import {', '.join(sorted(names))}")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            found.append(f"{where} uses {node.id}")
        elif isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "torch" and node.attr in FORBIDDEN_TORCH:
                found.append(f"{where} uses torch.{node.attr}")
            elif node.attr in FORBIDDEN_ATTRIBUTES or node.attr == "__import__":
                found.append(f"{where} uses .{node.attr}")
        elif isinstance(node, ast.keyword) and node.arg == "use_safetensors":
            if not (isinstance(node.value, ast.Constant) and node.value.value is True):
                found.append(f"{where} passes use_safetensors other than True")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if "://" in node.value or node.value.endswith(PICKLE_SUFFIXES):
                found.append(f"{where} names {node.value!r}")
    return found


def test_remote_code_imports_only_torch_transformers_and_the_standard_basics():
    files = sorted(MODELING_DIR.glob("*.py"))
    assert {path.name for path in files} >= {"configuration_qrm.py", "modeling_qrm.py"}
    violations = [v for path in files for v in remote_code_violations(path.read_text(), path.name)]
    assert violations == []


@pytest.mark.parametrize(
    "source",
    [
        "import os",
        "import subprocess",
        "from urllib.request import urlopen",
        "import requests",
        "import socket",
        "from . import helpers",
        "eval('1')",
        "exec('x = 1')",
        "open('weights.bin')",
        "torch.load('x')",
        "__import__('os')",
        "model.from_pretrained(path, use_safetensors=False)",
        "URL = 'https://example.com/weights'",
        "import http.client",
        "from torch import load",
        "import torch.hub",
        "torch.jit.load(path)",
        "state = torch.load(path, weights_only=True)",
        "path.write_text('x')",
        "WEIGHTS = 'pytorch_model.bin'",
        "builtins.print",
    ],
)
def test_the_remote_code_check_catches_violations(source):
    assert remote_code_violations(source, "example.py")


def test_saved_code_files_are_the_modeling_files(model_dir):
    for name in ("configuration_qrm.py", "modeling_qrm.py"):
        assert (model_dir / name).read_text() == (MODELING_DIR / name).read_text()


def test_modeling_code_loads_weights_only_from_safetensors(tmp_path):
    """A directory (or repo) whose weights are a pickle file is refused by the modeling code's from_pretrained.

    In-process this is the installed class; the repo carries the same file (test above), and in this process
    transformers prefers the registered class over the downloaded copy anyway.
    """
    model = make_qrm(seed=42)
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="model.safetensors"):
        QRMForSequenceClassification.from_pretrained(tmp_path)
    with pytest.raises(OSError, match="model.safetensors"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=True)


def test_push_refuses_a_loop_of_links_in_one_line(model_dir, no_hub_calls, capsys):
    """A careless `ln -s` (two links naming each other) is a user error, not a traceback."""
    from qrm_hf.cli import main

    (model_dir / "loop_a").symlink_to(model_dir / "loop_b")
    (model_dir / "loop_b").symlink_to(model_dir / "loop_a")
    with pytest.raises(SystemExit) as exit:
        main(["push", str(model_dir), "qrm-org/model"])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "loop_" in err, err
