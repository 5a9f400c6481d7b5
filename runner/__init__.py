"""The kubescribe runner: fetch audio from Redis, transcribe with faster-whisper, write back.

Runs as the command of a runner Job (one request, or several in pooled mode), and in
process for ``kubescribe transcribe``.
"""
