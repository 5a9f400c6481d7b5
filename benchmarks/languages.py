"""wer_by_model: word error rate and real-time factor by model and language.

tiny.en (bundled) and base (the test setup's model directory: hack/setup.sh models) on
English; base on Spanish, French, German, Italian and Brazilian Portuguese. espeak-ng
speech, short plain sentences without numbers (a "9" for "nine" would count as an error).
Each clip is transcribed twice by the runner's engine: with the language detected, and
with it given (``spec.language``); the table shows both, how often detection was right,
and the real-time factor (processing seconds per second of audio) of the detected run.
The baseline is tiny.en on the same English clips, in the same run.
"""

from __future__ import annotations

import time
import wave
from pathlib import Path

from harness.speech import wer

from .common import Context, Outcome, engine_with_base, log, median

#: language -> (espeak-ng voice, sentences)
SPEECH = {
    "en": ("en", ("The quick brown fox jumps over the lazy dog.",
                  "The weather today is sunny with a light breeze from the west.",
                  "We will meet at the library on Monday afternoon.",
                  "Our garden has tomatoes, beans and a small apple tree near the fence.")),
    "es": ("es", ("Buenos días. Quisiera un café y un pan, por favor. Muchas gracias.",
                  "El perro duerme debajo de la mesa de la cocina.",
                  "Mi hermana trabaja en un hospital grande de la ciudad.",
                  "Los niños juegan en el parque después de la escuela.")),
    "fr": ("fr-fr", ("Bonjour. Je voudrais un café et un croissant, s'il vous plaît. Merci beaucoup.",
                     "Le chien dort sous la table de la cuisine.",
                     "Ma sœur travaille dans un grand hôpital de la ville.",
                     "Les enfants jouent dans le parc après l'école.")),
    "de": ("de", ("Guten Morgen. Ich möchte einen Kaffee und ein Brötchen, bitte. Vielen Dank.",
                  "Der Hund schläft unter dem Küchentisch.",
                  "Meine Schwester arbeitet in einem großen Krankenhaus in der Stadt.",
                  "Die Kinder spielen nach der Schule im Park.")),
    "it": ("it", ("Buongiorno. Vorrei un caffè e un cornetto, per favore. Grazie mille.",
                  "Il cane dorme sotto il tavolo della cucina.",
                  "Mia sorella lavora in un grande ospedale della città.",
                  "I bambini giocano nel parco dopo la scuola.")),
    "pt": ("pt-br", ("Bom dia. Eu queria um café e um pão, por favor. Muito obrigado.",
                     "O cachorro dorme debaixo da mesa da cozinha.",
                     "Minha irmã trabalha em um grande hospital da cidade.",
                     "As crianças brincam no parque depois da escola.")),
}
RUNS = (("tiny.en", "en"), ("base", "en"), ("base", "es"), ("base", "fr"), ("base", "de"), ("base", "it"),
        ("base", "pt"))


def _clip(voice: str, text: str, path: Path) -> tuple[bytes, float]:
    from harness.speech import speak

    speak(text, path, speed=150, voice=voice)
    with wave.open(str(path)) as w:
        seconds = w.getnframes() / w.getframerate()
    return path.read_bytes(), seconds


def wer_by_model(ctx: Context) -> Outcome:
    import psutil

    from kubescribe.models import parse_spec

    out = Outcome("wer_by_model", "Word error rate and real-time factor by model and language")
    engine = engine_with_base(out, keep_models=2)
    if engine is None:
        return out
    out.measured = (
        "4 espeak-ng sentences per language (150 words a minute, 2.9-5.5 s each, no numbers), CPU, int8, beam "
        "5, the runner's engine (`Engine.transcribe`, VAD on, sequential decoding). Each clip twice: language "
        "detected, and language given (`spec.language`). WER over the 4 clips together (lower case, no "
        "punctuation); RTF = processing seconds / audio seconds, median of the detected runs. Model load time "
        "and the process' RSS growth when each model was loaded, once, before the clips. The baseline is "
        "tiny.en on the same English clips.")
    clips = {lang: [_clip(voice, text, ctx.workdir / f"{lang}-{i}.wav") for i, text in enumerate(texts)]
             for lang, (voice, texts) in SPEECH.items()}
    proc = psutil.Process()
    loads: dict[str, tuple[float, float]] = {}
    rows, figures = [], {}
    for model, lang in RUNS:
        if model not in loads:
            rss, t0 = proc.memory_info().rss, time.perf_counter()
            engine.model(model, "cpu", "default")
            loads[model] = (time.perf_counter() - t0, (proc.memory_info().rss - rss) / 2**20)
        refs, detected, given, right, rtf = list(SPEECH[lang][1]), [], [], 0, []
        for data, seconds in clips[lang]:
            spec = {"audio": {"redisKey": "k"}, "model": model, "device": "cpu", "decoding": "sequential"}
            r = engine.transcribe(data, parse_spec(spec))
            detected.append(r["text"])
            right += r["language"] == lang
            rtf.append(r["processing_seconds"] / seconds)
            given.append(engine.transcribe(data, parse_spec({**spec, "language": lang}))["text"])
        f = {"wer_detected": wer(refs, detected), "wer_given": wer(refs, given),
             "detected_right": right, "rtf": median(rtf)}
        figures[f"{model}/{lang}"] = f
        log(f"{model} {lang}: {f}")
        rows.append([model, lang, f"{right}/{len(refs)}", f"{f['wer_detected']:.3f}", f"{f['wer_given']:.3f}",
                     f"{f['rtf']:.3f}"])
    out.table("WER and real-time factor by model and language", ["model", "language", "detected right",
              "WER (detected)", "WER (language given)", "RTF"], rows)
    out.table("Model load, once per process", ["model", "load time", "RSS growth"],
              [[m, f"{t:.2f} s", f"{r:.0f} MiB"] for m, (t, r) in loads.items()])
    tiny, base = figures["tiny.en/en"], figures["base/en"]
    out.headline = (f"base: English WER {base['wer_given']:.3f}, RTF {base['rtf']:.2f}; other languages WER "
                    + ", ".join(f"{lang} {figures[f'base/{lang}']['wer_given']:.2f}" for lang in SPEECH if lang != "en")
                    + " (language given)")
    out.baseline = f"tiny.en: English WER {tiny['wer_given']:.3f}, RTF {tiny['rtf']:.2f}"
    out.ratio = f"base/tiny.en on English: WER x{base['wer_given'] / max(tiny['wer_given'], 1e-9):.2f}, " \
                f"RTF x{base['rtf'] / tiny['rtf']:.2f}"
    out.data = {"figures": figures, "loads": loads}
    engine.unload()
    return out
