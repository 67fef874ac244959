"""argv for the admin's own tools: xz/zstd and gpg, so every part stays usable by hand."""

from __future__ import annotations

from ..config import CompressionConfig, EncryptionConfig

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
