"""gpkg signatures: the binhost signs with a private key; every verifier trusts its public half.

Portage verifies a gpkg with ``BINPKG_GPG_VERIFY_GPG_HOME`` after dropping to
the ``nobody`` user, and accepts only a signature whose key is fully or
ultimately trusted. So a verify keyring must hold the public key with owner
trust 6 (ultimate) and be readable by everyone, as Gentoo's getuto leaves
``/etc/portage/gnupg``. quickpkg verifies what it has just signed, so the
build system needs such a keyring too, not only the instances.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..run.base import Target
from ..run.files import atomic_write

ULTIMATE = "6"
KEY_FILE = "signing-key.asc"


@dataclass(frozen=True)
class SigningKey:
    fingerprint: str
    public: str  # ASCII-armoured public key; nothing secret


def signing_key(target: Target, gpg_home: str, key: str) -> SigningKey:
    """The configured key's fingerprint and public half, read from the signing keyring."""
    listing = target.run(["gpg", "--homedir", gpg_home, "--batch", "--with-colons", "--list-secret-keys", key],
                         check=False, mutates=False)
    fingerprints = [line.split(":")[9] for line in listing.stdout.splitlines() if line.startswith("fpr:")]
    if listing.returncode != 0 or not fingerprints:
        raise ConfigError(f"binhost.signing.key: no secret key {key!r} in {gpg_home} on {target.describe()}")
    public = target.run(["gpg", "--homedir", gpg_home, "--batch", "--armor", "--export", fingerprints[0]],
                        mutates=False).stdout
    return SigningKey(fingerprints[0], public)


def trusts(target: Target, home: str, key: SigningKey) -> bool:
    result = target.run(["gpg", "--homedir", home, "--batch", "--no-autostart", "--export-ownertrust"],
                        check=False, mutates=False)
    return result.returncode == 0 and f"{key.fingerprint}:{ULTIMATE}:" in result.stdout.splitlines()


def ensure_trusted(target: Target, home: str, key: SigningKey) -> bool:
    """Make ``home`` a verify keyring that trusts ``key``; False when it already did."""
    if trusts(target, home, key):
        return False
    target.run(["mkdir", "-p", "--", home])
    target.run(["gpg", "--homedir", home, "--batch", "--no-autostart", "--import"], input=key.public)
    target.run(["gpg", "--homedir", home, "--batch", "--no-autostart", "--import-ownertrust"],
               input=f"{key.fingerprint}:{ULTIMATE}:\n")
    target.run(["gpg", "--homedir", home, "--batch", "--no-autostart", "--check-trustdb"])
    # Portage runs the verifying gpg as nobody: it must read the keyring (public data only).
    target.run(["chmod", "go+rx", "--", home])
    target.run(["chmod", "go+r", "--", f"{home}/pubring.kbx", f"{home}/trustdb.gpg"])
    return True


def save(key: SigningKey, path) -> None:
    """Kept beside the facts, for instances: ``<fingerprint>`` on the first line, then the key."""
    atomic_write(path, f"{key.fingerprint}\n{key.public}")


def load(path) -> SigningKey:
    try:
        fingerprint, public = path.read_text().split("\n", 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: the binhost's public signing key is not saved yet; run `inv binhost` first") \
            from None
    return SigningKey(fingerprint, public)
