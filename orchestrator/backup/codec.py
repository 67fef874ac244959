"""argv for the admin's own tools: xz/zstd and gpg, so every part stays usable by hand."""

from __future__ import annotations

import subprocess

from ..config import CompressionConfig, EncryptionConfig
from ..errors import OrchestratorError

SUFFIX = {"xz": ".xz", "zstd": ".zst"}


def compress_argv(comp: CompressionConfig) -> list[str]:
    """One single-threaded stream per chunk: we parallelise across chunks, like the seed's xargs -P."""
    if comp.codec == "xz":
        return ["xz", "--compress", "--stdout", "--quiet", "--threads=1", f"-{comp.level}{'e' if comp.extreme else ''}"]
    argv = ["zstd", "--compress", "--stdout", "--quiet", "--threads=1", f"-{comp.level}"]
    if comp.level > 19:
        argv.insert(-1, "--ultra")
    return argv


def decompress_argv(codec: str) -> list[str]:
    return ["xz", "--decompress", "--stdout", "--quiet"] if codec == "xz" else ["zstd", "--decompress", "--stdout", "--quiet"]


def gpg_base(enc: EncryptionConfig) -> list[str]:
    argv = ["gpg", "--batch", "--no-tty", "--quiet"]
    if enc.gpg_home:
        argv += ["--homedir", str(enc.gpg_home)]
    return argv


def encrypt_argv(enc: EncryptionConfig) -> list[str]:
    """Encrypt AFTER compression (the seed's advice); gpg's own compression is off."""
    argv = gpg_base(enc) + ["--trust-model", "always", "--compress-algo", "none", "--encrypt"]
    for recipient in enc.recipients:
        argv += ["--recipient", recipient]
    return argv


def decrypt_argv(enc: EncryptionConfig) -> list[str]:
    argv = gpg_base(enc)
    if enc.passphrase_file:
        argv += ["--pinentry-mode", "loopback", "--passphrase-file", str(enc.passphrase_file)]
    return argv + ["--decrypt"]


def part_suffix(comp_codec: str, encrypted: bool) -> str:
    return SUFFIX[comp_codec] + (".gpg" if encrypted else "")


def gpg_encrypt_bytes(enc: EncryptionConfig, data: bytes, what: str) -> bytes:
    """Small documents (manifests): encrypted in memory to the configured recipients."""
    return _gpg(encrypt_argv(enc), data, f"encrypting {what}")


def gpg_decrypt_bytes(enc: EncryptionConfig, data: bytes, what: str) -> bytes:
    return _gpg(decrypt_argv(enc), data, f"decrypting {what}")


def _gpg(argv: list[str], data: bytes, doing: str) -> bytes:
    done = subprocess.run(argv, input=data, capture_output=True)
    if done.returncode:
        reason = gpg_reason(done.stderr)
        raise OrchestratorError(f"{doing} failed: gpg: {reason}" if reason else f"{doing} failed (gpg exit {done.returncode})")
    return done.stdout


def gpg_reason(stderr: bytes) -> str:
    """gpg's own words for why it failed, e.g. "decryption failed: No secret key"."""
    lines = [line.removeprefix("gpg: ").strip() for line in stderr.decode(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    for line in reversed(lines):
        if "failed" in line or "No secret key" in line or "No public key" in line:
            return line
    return lines[-1] if lines else ""
