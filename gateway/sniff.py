"""Is an upload audio (or a video with sound) at all? Decided from its first bytes.

The runner decodes with FFmpeg and would fail a non-audio file after it waited in the
queue; the gateway refuses it at once with a 400, before anything is stored. The check is
on the container's magic bytes, the same signatures ``file(1)`` uses: it lets through
every container FFmpeg reads for speech, and refuses text, HTML, JSON, images, PDFs and
archives, which are what clients send by mistake.
"""

from __future__ import annotations

#: Bytes of the upload the check needs.
HEAD_BYTES = 64


def sniff_audio(head: bytes) -> str | None:
    """The container of an audio upload from its first :data:`HEAD_BYTES` bytes, or None
    when it is not a known audio or video container."""
    if len(head) < 4:
        return None
    if head[:4] == b"RIFF" and head[8:12] in (b"WAVE", b"AVI "):
        return "wav" if head[8:12] == b"WAVE" else "avi"
    if head[:4] == b"RF64":
        return "wav"
    if head[:3] == b"ID3":
        return "mp3"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if head[:5] == b"#!AMR":
        return "amr"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:4] == b"caff":
        return "caf"
    if head[:4] == b"\x30\x26\xb2\x75":
        return "wma"
    if head[:4] == b"ADIF":
        return "aac"
    if head[:4] == b".snd":
        return "au"
    # An MPEG audio frame (mp3, mp2) or an ADTS AAC frame: 11 sync bits, then a layer and
    # version that are not the reserved values.
    if head[0] == 0xFF and (head[1] & 0xE0) == 0xE0:
        version, layer = (head[1] >> 3) & 0x3, (head[1] >> 1) & 0x3
        if (head[1] & 0xF6) == 0xF0:
            return "aac"
        if version != 1 and layer != 0:
            return "mp3"
    return None
