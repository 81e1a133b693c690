"""Drafting candidate descriptions with the operator's language model.

Any server that speaks OpenAI's chat completions (``POST {base}/chat/completions``) will do:
vLLM, Ollama (``/v1``), llama.cpp's server, OpenAI. The prompt asks, as the DRM paper did, for
each class's *core* visual features (shape, parts, proportions, texture and colour pattern)
and never its background or context, in sentences that start with the class name (as the
release's iWildCam descriptions do). The answer is read robustly (prose or code fences around
the JSON, keys in another case), and every failure is one typed error naming what happened: not
configured (501), unreachable, refused, malformed or oversized (502), too slow (504). The key
(``RCS_LLM_API_KEY``) goes in the Authorization header only: no message, log or stored
provenance carries it.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.errors import ServiceError, clip
from service.settings import Settings
from service.validation import clean_text, name_key

SYSTEM = (
    "You write short visual descriptions of object classes for a zero-shot image classifier. "
    "You answer with JSON only."
)
PROMPT = (
    "For each class below, write {n} different one-sentence descriptions of what the {noun} "
    "itself looks like in a photo: its core visual features, such as its shape, parts, "
    "proportions, texture and colour pattern. Start every sentence with the class name, "
    "exactly as given. Never describe the background, the setting, the location, the weather, "
    "the time of day or other objects around it.{domain}\n"
    "Answer with one JSON object mapping each class name, exactly as given, to a list of {n} "
    "strings, and nothing else.\n"
    "Classes: {classes}"
)
MAX_TEXT = 1000
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
SETTINGS = ("RCS_LLM_BASE_URL", "RCS_LLM_MODEL")


class LlmNotConfigured(ServiceError):
    status = 501
    code = "llm_not_configured"


class LlmFailed(ServiceError):
    status = 502
    code = "llm_failed"


class LlmTimeout(ServiceError):
    status = 504
    code = "llm_timeout"


@dataclass(frozen=True)
class Draft:
    descriptions: dict[str, list[str]]
    model: str
    prompt: str
    drafted_at: int


def configured(settings: Settings) -> tuple[str, str]:
    """The base URL and model; a 501 naming the settings to set otherwise."""
    if not settings.llm_base_url or not settings.llm_model:
        missing = [
            name
            for name, value in zip(
                SETTINGS, (settings.llm_base_url, settings.llm_model), strict=True
            )
            if not value
        ]
        raise LlmNotConfigured(
            f"no language model is configured: set {' and '.join(missing)} (and "
            "RCS_LLM_API_KEY if the server wants a key) to an OpenAI-compatible chat "
            "completions server (vLLM, Ollama, llama.cpp's server, OpenAI)"
        )
    return settings.llm_base_url.rstrip("/"), settings.llm_model


def prompt_for(classes: Sequence[str], per_class: int, domain: str | None) -> str:
    note = f" The images are {domain.strip().rstrip('.')}." if domain and domain.strip() else ""
    noun = "object" if not domain else "subject"
    return PROMPT.format(n=per_class, noun=noun, domain=note, classes=json.dumps(list(classes)))


def draft(
    settings: Settings, classes: Sequence[str], per_class: int, domain: str | None = None
) -> Draft:
    """Ask the configured model for ``per_class`` descriptions of every class."""
    base, model = configured(settings)
    prompt = prompt_for(classes, per_class, domain)
    body = {
        "model": model,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        "temperature": 0.2,
    }
    answer = _post(settings, f"{base}/chat/completions", body)
    content = _content(answer)
    return Draft(parse_drafts(content, classes, per_class), model, prompt, int(time.time()))


def _post(settings: Settings, url: str, body: dict[str, Any]) -> Any:
    """POST ``body`` as JSON; the answer's JSON. The standard library's client: the service
    needs no HTTP client dependency for one call."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    timeout = settings.llm_timeout_s
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (the operator's URL)
            status, text = response.status, _read(response, settings)
    except urllib.error.HTTPError as exc:  # 4xx, 5xx: the server's words, clipped
        status, text = exc.code, _read(exc, settings)
    except TimeoutError as exc:
        raise _timeout(timeout) from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            raise _timeout(timeout) from exc
        raise LlmFailed(
            f"could not reach the language model at {url}: {_hidden(str(reason), key)}"
        ) from exc
    if status >= 400:
        raise LlmFailed(
            f"the language model server refused the request ({status}): "
            f"{clip(_hidden(text, key))}; nothing was stored"
        )
    try:
        return json.loads(text)
    except ValueError as exc:
        raise LlmFailed(
            f"the language model server's answer is not JSON: {clip(_hidden(text, key))}"
        ) from exc


def _read(response: Any, settings: Settings) -> str:
    """The whole answer, at most ``llm_max_response_bytes``, within ``llm_timeout_s`` in all (a
    server that drips its answer byte by byte never times out a single read)."""
    limit = settings.llm_max_response_bytes
    deadline = time.monotonic() + settings.llm_timeout_s
    raw = bytearray()
    while chunk := response.read(64 * 1024):
        raw += chunk
        if len(raw) > limit:
            raise LlmFailed(
                f"the language model answered more than {limit} bytes "
                "(RCS_LLM_MAX_RESPONSE_BYTES); nothing was stored"
            )
        if time.monotonic() > deadline:
            raise _timeout(settings.llm_timeout_s)
    return bytes(raw).decode("utf-8", errors="replace")


def _timeout(seconds: float) -> LlmTimeout:
    return LlmTimeout(
        f"the language model did not answer within {seconds:g} s (RCS_LLM_TIMEOUT_S); "
        "nothing was stored"
    )


def _hidden(text: str, key: str | None) -> str:
    return text.replace(key, "***") if key else text


def _content(answer: Any) -> str:
    """``choices[0].message.content`` of a chat completion."""
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise LlmFailed(
            f"the answer is not a chat completion (no choices[0].message.content): "
            f"{clip(json.dumps(answer))}"
        ) from None
    if not isinstance(content, str) or not content.strip():
        raise LlmFailed("the language model answered no text")
    return content


def parse_drafts(content: str, classes: Sequence[str], per_class: int) -> dict[str, list[str]]:
    """``{class: [texts]}`` for every class from a model's answer: the JSON object in it (bare,
    in a code fence, or amid prose), keys matched to the classes by name key (case, spacing),
    non-text and over-long entries skipped, at most ``per_class`` each. A class left without
    a text, or no JSON at all, is an error naming it."""
    found = _json_object(content)
    if isinstance(found, dict) and isinstance(found.get("descriptions"), dict):
        found = found["descriptions"]
    if isinstance(found, list):  # [{"class": ..., "descriptions": [...]}, ...]
        found = {
            str(item.get("class") or item.get("name")): item.get("descriptions")
            for item in found
            if isinstance(item, dict)
        }
    if not isinstance(found, dict):
        raise LlmFailed(f"the language model's answer holds no JSON object: {clip(content)}")
    by_key = {name_key(str(k)): v for k, v in found.items()}
    result: dict[str, list[str]] = {}
    for name in classes:
        value = by_key.get(name_key(name))
        items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        result[name] = _texts(items)[:per_class]
    missing = [name for name, texts in result.items() if not texts]
    if missing:
        raise LlmFailed(
            f"the language model gave no usable description for class(es) {missing[:20]}; "
            "nothing was stored"
        )
    return result


def _json_object(content: str) -> Any:
    candidates = [content, *_FENCE.findall(content)]
    start, end = content.find("{"), content.rfind("}")
    if 0 <= start < end:
        candidates.append(content[start : end + 1])
    start, end = content.find("["), content.rfind("]")
    if 0 <= start < end:
        candidates.append(content[start : end + 1])
    for text in candidates:
        try:
            return json.loads(text.strip())
        except ValueError:
            continue
    return None


def _texts(items: list[Any]) -> list[str]:
    texts = []
    for item in items:
        if not isinstance(item, str):
            continue
        try:
            text = clean_text(item).strip()
        except ValueError:
            continue
        if text and len(text) <= MAX_TEXT and text not in texts:
            texts.append(text)
    return texts
