"""Offsite backup: tar -> split -> compress -> encrypt -> store, with a catalog and a restore."""
