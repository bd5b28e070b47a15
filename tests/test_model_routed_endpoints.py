"""The other model-routed endpoints through the router: the official openai SDK and httpx as clients."""

from __future__ import annotations

import httpx
import openai
import pytest

from router.protocols import upstream_url
from tests.clients import openai_client
from tests.conftest import write_config

MODEL = "multi-model"


@pytest.fixture
def env(router_factory, upstream_factory, tmp_path):
    upstream = upstream_factory(name="multi", models=[MODEL])
    router = router_factory(config=write_config(tmp_path / "c.yaml", {"multi": {"url": upstream.base_url}}))
    key = router.add_user("alice")
    sdk = openai_client(router, key, timeout=30)
    return router, upstream, key, sdk


def test_models_retrieve_and_a_404_for_what_the_caller_may_not_use(env) -> None:
    *_, sdk = env
    model = sdk.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.models.retrieve("someone-elses-model")
    assert caught.value.body["code"] == "model_not_found"


def test_images_and_moderations_with_the_sdk(env) -> None:
    router, upstream, _, sdk = env
    image = sdk.images.generate(model=MODEL, prompt="a cat")
    assert image.data[0].b64_json == "aW1n"
    moderation = sdk.moderations.create(model=MODEL, input="hello")
    assert moderation.results[0].flagged is False
    assert [r.path for r in upstream.received[-2:]] == ["/v1/images/generations", "/v1/moderations"]
    rows = router.wait_for_logs(2)
    assert {r["endpoint"] for r in rows} >= {"/v1/images/generations", "/v1/moderations"}


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
def test_rerank_is_routed_by_model_with_usage_logged(env, path) -> None:
    router, upstream, key, _ = env
    answer = httpx.post(
        router.url + path,
        json={"model": MODEL, "query": "q", "documents": ["a", "b"]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert answer.status_code == 200 and len(answer.json()["results"]) == 2
    assert upstream.received[-1].path == path
    [row] = router.wait_for_logs(1)
    assert row["endpoint"] == path and row["prompt_tokens"] == 10


def test_tokenize_goes_to_the_backends_root_and_speech_streams_binary(env) -> None:
    router, upstream, key, sdk = env
    auth = {"Authorization": f"Bearer {key}"}
    counted = httpx.post(f"{router.url}/tokenize", json={"model": MODEL, "prompt": "a b c"}, headers=auth, timeout=30)
    assert counted.json()["count"] == 3 and upstream.received[-1].path == "/tokenize"
    speech = sdk.audio.speech.create(model=MODEL, voice="alloy", input="hi")
    assert speech.content == b"".join(bytes([i]) * 1000 for i in range(4))
    refused = httpx.post(f"{router.url}/tokenize", json={"model": MODEL, "prompt": "x"}, timeout=30)
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"


def test_upstream_url_at_the_root_or_under_the_base() -> None:
    assert upstream_url("http://h:8000/v1", "/tokenize", True) == "http://h:8000/tokenize"
    assert upstream_url("http://h:8000/v1/", "/rerank", True) == "http://h:8000/rerank"
    assert upstream_url("http://h:8000/v1", "/rerank", False) == "http://h:8000/v1/rerank"


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK marks audio.translations deprecated
@pytest.mark.parametrize("endpoint", ["transcriptions", "translations"])
def test_audio_uploads_are_routed_by_their_model_field(env, endpoint) -> None:
    router, upstream, _, sdk = env
    audio = bytes(range(256)) * 400  # 100 KB, binary
    api = sdk.audio.transcriptions if endpoint == "transcriptions" else sdk.audio.translations
    result = api.create(model=MODEL, file=("talk.wav", audio, "audio/wav"))
    assert result.text == f"{len(audio)} bytes of talk.wav for {MODEL}"  # the file arrived byte for byte
    sent = upstream.received[-1]
    assert sent.path == f"/v1/audio/{endpoint}" and sent.headers["Content-Type"].startswith("multipart/form-data")
    [row] = router.wait_for_logs(1)
    assert row["endpoint"] == f"/v1/audio/{endpoint}" and row["model"] == MODEL and row["total_tokens"] == 15


def test_an_aliased_model_is_rewritten_inside_the_form(env) -> None:
    router, upstream, key, _ = env
    files = {"file": ("a.wav", b"\x00\x01", "audio/wav")}
    answer = httpx.post(
        f"{router.v1}/audio/transcriptions",
        data={"model": f"[multi]{MODEL}", "language": "en"},
        files=files,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert upstream.received[-1].body == {"model": MODEL, "language": "en"}


def test_form_fields_are_bounded_and_a_json_body_is_refused() -> None:
    from router.errors import ApiError
    from router.protocols.forms import form_fields, with_field

    ctype = "multipart/form-data; boundary=XyZ"
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\nm1\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n\x00--Xy\r\n'
        b"--XyZ--\r\n"
    )
    assert form_fields(body, ctype) == {"model": "m1"}
    assert form_fields(with_field(body, ctype, "model", "other"), ctype) == {"model": "other"}
    with pytest.raises(ApiError):
        form_fields(b"{}", "application/json")
    many = b"".join(b'--XyZ\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nv\r\n' % i for i in range(100))
    with pytest.raises(ApiError):
        form_fields(many + b"--XyZ--\r\n", ctype)
