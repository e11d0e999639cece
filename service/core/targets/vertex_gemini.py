"""`vertex-gemini`: Google Vertex AI's Gemini tuning format (supervised and preference).

A chat line is `{"systemInstruction": {"role": "system", "parts": [...]}, "contents": [{"role":
"user" | "model", "parts": [...]}], "tools": [{"functionDeclarations": [...]}]}`: every system
message's text goes to `systemInstruction` (in order, wherever it stood), assistant turns become
`model`, tool calls `functionCall` parts (arguments parsed from their JSON) and tool results
`functionResponse` parts in a `user` turn, named after the call they answer; adjacent turns of one
role are one content with their parts in order. Images are `inlineData` (data URLs) or `fileData`
(gs:// URIs). Vertex has no per-message weights (`target_weight_unsupported`: keep trains every
model turn; fix splits the example per trained turn).

A preference line is `{"systemInstruction", "contents" (ending on a user turn), "completions":
[{"score": 1, "completion": {"role": "model", ...}}, {"score": 0, ...}]}`.
"""

from __future__ import annotations

import json
import mimetypes
from typing import Any, ClassVar

import msgspec

from service.core.conversation import (
    ChatExample,
    ImagePart,
    Message,
    PreferenceExample,
    RefusalPart,
    TextPart,
    text_of,
)
from service.core.repair import drop_trailing
from service.core.targets import checks
from service.core.targets.base import Context, Kind, Rule, Target, _Stop
from service.core.targets.together import ends_on_prompt

replace = msgspec.structs.replace
_json = msgspec.json.Encoder()


def _image_ok(url: str) -> bool:
    return (url.startswith("data:") and ";base64," in url) or (
        url.startswith("gs://") and _mime(url) is not None
    )


def _mime(uri: str) -> str | None:
    guess = mimetypes.guess_type(uri)[0]
    return guess if guess and guess.startswith("image/") else None


class VertexGemini(Target):
    name = "vertex-gemini"
    kinds: ClassVar[frozenset[Kind]] = frozenset({"chat", "preference"})
    rules = (
        Rule("target_weight_unsupported", "no per-message weights: every model turn is trained"),
        Rule(
            "target_tool_calls_unsupported",
            "no deprecated `functions` / `function_call`; tool arguments must be JSON",
        ),
        Rule("target_unsupported_content", "images as data URLs or gs:// URIs of a known image type"),
        Rule("target_over_token_limit", "131,072 tokens per example (Gemini 2.5 Flash / Flash-Lite)"),
        Rule("target_role_order", "a preference prompt ends on a user turn"),
        Rule("target_example_count", "at most 1,000,000 examples"),
    )
    upload_hint = (
        "`gcloud storage cp train.jsonl gs://BUCKET/`, then `client.tunings.tune(base_model=..., "
        "training_dataset=types.TuningDataset(gcs_uri='gs://BUCKET/train.jsonl'))` (google-genai)"
    )

    def adapt_chat(self, example: ChatExample, ctx: Context) -> list[ChatExample]:
        example = checks.no_tools(example, ctx, self.name, legacy_only=True)
        example = checks.images_accepted(example, ctx, self.name, _image_ok)
        example = _json_arguments(example, ctx, self.name)
        return checks.no_weights(example, ctx, self.name)

    def adapt_preference(self, example: PreferenceExample, ctx: Context) -> PreferenceExample:
        prompt = checks.no_tools(example.input, ctx, self.name, legacy_only=True)
        prompt = checks.images_accepted(prompt, ctx, self.name, _image_ok)
        prompt = _json_arguments(prompt, ctx, self.name)
        prompt = ends_on_prompt(prompt, ctx, self.name)
        return replace(example, input=prompt)

    def encode_chat(self, example: ChatExample) -> bytes:
        return _json.encode(_chat(example))

    def encode_preference(self, example: PreferenceExample) -> bytes:
        out = _chat(example.input)
        names = _call_names(example.input.messages)
        out["completions"] = [
            {"score": 1, "completion": _content(example.preferred_output[0], names)},
            {"score": 0, "completion": _content(example.non_preferred_output[0], names)},
        ]
        return _json.encode(out)


def _json_arguments(example: ChatExample, ctx: Context, target: str) -> ChatExample:
    for i, m in enumerate(example.messages):
        for call in m.tool_calls or ():
            try:
                json.loads(call.function.arguments)
            except ValueError:
                ctx.found("target_tool_calls_unsupported", f"{target} needs tool arguments as JSON", i)
                cut = drop_trailing(replace(example, messages=example.messages[:i]), ctx.line)[0]
                if not cut.messages or cut.messages[-1].role != "assistant":
                    raise _Stop("dropped") from None
                return cut
    return example


def _call_names(messages: list[Message]) -> dict[str, str]:
    return {c.id: c.function.name for m in messages for c in m.tool_calls or ()}


def _chat(example: ChatExample) -> dict[str, Any]:
    names = _call_names(example.messages)
    out: dict[str, Any] = {}
    system = [{"text": text_of(m)} for m in example.messages if m.role == "system"]
    if system:
        out["systemInstruction"] = {"role": "system", "parts": system}
    contents: list[dict[str, Any]] = []
    for m in example.messages:
        if m.role == "system":
            continue
        content = _content(m, names)
        if contents and contents[-1]["role"] == content["role"]:
            contents[-1]["parts"].extend(content["parts"])
        else:
            contents.append(content)
    out["contents"] = contents
    if example.tools:
        out["tools"] = [{"functionDeclarations": [_declaration(t.function) for t in example.tools]}]
    return out


def _declaration(f: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": f.name}
    if f.description is not None:
        out["description"] = f.description
    if f.parameters is not None:
        out["parameters"] = f.parameters
    return out


def _content(m: Message, names: dict[str, str]) -> dict[str, Any]:
    if m.role == "tool":
        return {"role": "user", "parts": [_response(m, names)]}
    parts = _parts(m)
    for call in m.tool_calls or ():
        args = json.loads(call.function.arguments)
        parts.append(
            {
                "functionCall": {
                    "name": call.function.name,
                    "args": args if isinstance(args, dict) else {"value": args},
                }
            }
        )
    return {"role": "model" if m.role == "assistant" else "user", "parts": parts or [{"text": ""}]}


def _response(m: Message, names: dict[str, str]) -> dict[str, Any]:
    text = text_of(m)
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    response = value if isinstance(value, dict) else {"content": value}
    return {
        "functionResponse": {"name": names.get(m.tool_call_id or "", m.name or "tool"), "response": response}
    }


def _parts(m: Message) -> list[dict[str, Any]]:
    if m.content is None:
        return []
    if isinstance(m.content, str):
        return [{"text": m.content}] if m.content or not m.tool_calls else []
    out: list[dict[str, Any]] = []
    for p in m.content:
        if isinstance(p, TextPart):
            out.append({"text": p.text})
        elif isinstance(p, RefusalPart):
            out.append({"text": p.refusal})
        elif isinstance(p, ImagePart):
            out.append(_image(p.image_url.url))
    return out


def _image(url: str) -> dict[str, Any]:
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        return {"inlineData": {"mimeType": head[5:].split(";")[0], "data": data}}
    return {"fileData": {"mimeType": _mime(url), "fileUri": url}}


TARGET = VertexGemini()
