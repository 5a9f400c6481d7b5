"""Other languages through the gateway, end to end: the real API server, Redis, the
operator and runner processes with the base model on their model volume (the test setup's
model directory, offline), and the official ``openai`` client calling ``whisper-1``."""

from __future__ import annotations

import httpx
import pytest

from harness.envtest import wait_for
from harness.envtest.cluster import make_namespace
from harness.gateway import WRITER_RULES, Callers, GatewayProcess
from harness.operator import OperatorProcess
from harness.speech import speak, wer
from tests.test_multilingual import CAFE, models_dir

pytestmark = pytest.mark.kube


@pytest.fixture(scope="module")
def env(kube_cluster, kube_api, redis_server, crd_installed, fake_kubelet, tmp_path_factory):
    """A namespace, the operator (its runners see the model directory, offline) and a
    gateway that mounts the same directory read-only, as the chart can."""
    from kubernetes import client

    models = str(models_dir())
    core = client.CoreV1Api(kube_api)
    ns = make_namespace(core, "languages")
    workdir = tmp_path_factory.mktemp("languages")
    callers = Callers(kube_api, ns)
    op = OperatorProcess(str(kube_cluster.kubeconfig_path), ns, redis_server.url, workdir,
                         runner_env={"KUBESCRIBE_MODEL_DIR": models, "KUBESCRIBE_OFFLINE": "1"}).start()
    gw = GatewayProcess(str(kube_cluster.kubeconfig_path), redis_server.url, workdir,
                        gateway_model_dir=models, gateway_auth_cache_seconds="0").start()
    clips = {lang: speak(CAFE[lang][1], workdir / f"{lang}.wav", speed=150, voice=CAFE[lang][0])
             for lang in ("en", "es")}
    try:
        yield {"gateway": gw, "token": callers.token("writer", rules=WRITER_RULES), "clips": clips}
    finally:
        gw.stop()
        op.stop()
        callers.cleanup()
        core.delete_namespace(ns)


def test_the_openai_client_translates_english_and_spanish_speech_with_whisper_1(env):
    import openai

    client = openai.OpenAI(base_url=f"{env['gateway'].url}/v1", api_key=env["token"], max_retries=0, timeout=300)
    for lang in ("en", "es"):
        with env["clips"][lang].open("rb") as f:
            text = client.audio.translations.create(model="whisper-1", file=f).text
        assert wer(CAFE["en"][1], text) <= 0.5, (lang, text)
        assert "coffee" in text.lower(), (lang, text)
        with env["clips"][lang].open("rb") as f:
            plain = client.audio.translations.create(model="whisper-1", file=f, response_format="text")
        assert isinstance(plain, str) and plain.strip() == text


def test_spanish_is_detected_in_verbose_json_the_status_and_the_analysis(env):
    import openai

    gw, auth = env["gateway"], {"Authorization": f"Bearer {env['token']}"}
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=env["token"], max_retries=0, timeout=300)
    with env["clips"]["es"].open("rb") as f:
        verbose = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json")
    assert verbose.language == "spanish" and wer(CAFE["es"][1], verbose.text) <= 0.25, verbose.text

    with env["clips"]["es"].open("rb") as f:
        r = httpx.post(f"{gw.url}/v1/transcriptions", files={"file": ("es.wav", f)}, data={"model": "base"},
                       headers=auth)
    assert r.status_code == 202, r.text
    url = f"{gw.url}/v1/transcriptions/{r.json()['name']}"
    state = wait_for(lambda: (s := httpx.get(url, headers=auth).json())["phase"] in ("Succeeded", "Failed") and s,
                     timeout=300, description="the Spanish request to finish")
    assert state["phase"] == "Succeeded" and state["language"] == "es", state
    analysis = httpx.get(f"{url}/analysis", headers=auth).json()
    assert analysis["language"] == "es" and analysis["word_count"] >= 10, analysis


def test_models_lists_what_the_runners_can_load_and_a_missing_model_fails_with_the_fix(env):
    gw, auth = env["gateway"], {"Authorization": f"Bearer {env['token']}"}
    listing = httpx.get(f"{gw.url}/v1/models", headers=auth).json()
    assert listing["object"] == "list"
    by_id = {m["id"]: m for m in listing["data"]}
    assert by_id["base"]["kubescribe"] == {"source": "pypi", "multilingual": True}
    assert by_id["tiny.en"]["kubescribe"]["multilingual"] is False
    assert by_id["whisper-1"]["kubescribe"]["alias"] == {"transcribe": "base", "translate": "base"}
    assert all(m["object"] == "model" and m["owned_by"] == "kubescribe" for m in listing["data"])

    with env["clips"]["en"].open("rb") as f:
        r = httpx.post(f"{gw.url}/v1/transcriptions", files={"file": ("en.wav", f)}, data={"model": "small"},
                       headers=auth)
    url = f"{gw.url}/v1/transcriptions/{r.json()['name']}"
    state = wait_for(lambda: (s := httpx.get(url, headers=auth).json())["phase"] in ("Succeeded", "Failed") and s,
                     timeout=300, description="the request for a missing model to end")
    assert state["phase"] == "Failed" and state["reason"] == "ModelNotFound", state
    assert "kubescribe models pull small --from" in state["message"]
