"""The build session: our ``chroot/`` scripts run in the build chroot or a prefix (see ``session``)."""

from .session import INSIDE_DIR, SCRIPTS_DIR, BuildRoot, BuildSession, SessionSpec, open_session

__all__ = ["INSIDE_DIR", "SCRIPTS_DIR", "BuildRoot", "BuildSession", "SessionSpec", "open_session"]
