"""Job bodies for the ``binhost`` tasks: config, build system and stages wired together."""

from __future__ import annotations

from collections.abc import Sequence

from ..config import BinhostConfig
from ..errors import ConfigError
from ..job import JobRun
from . import clients, signing
from .clients import saved_facts
from .serve import serve_forever
from .system import BuildSystem, build_system, output_dir
from .stages import OPT_IN, RUNNERS, STAGE_DOCS, STAGES, StageContext
from .tree import FingerprintStore


def build(run: JobRun, stages: Sequence[str] | None = None, unknown_skips: Sequence[str] = (),
          skip: Sequence[str] = ()) -> None:
    """Run ``stages`` in order in one build-system session; each reports what it did or why not.

    ``stages=None`` is the full ``inv binhost``: every stage not in ``skip``, where an
    opt-in stage (prune) runs only when its setting (``binhost.prune``) is true.
    """
    if unknown_skips:
        raise ConfigError(f"--skip: no stage {unknown_skips[0]!r} (stages: {', '.join(STAGES)})")
    cfg: BinhostConfig = run.section("binhost")
    off = {} if stages is not None else {
        name: f"off (binhost.{setting} is false; `inv binhost.{name}` runs it once)"
        for name, setting in OPT_IN.items() if not getattr(cfg, setting)}
    stages = [name for name in STAGES if name not in skip] if stages is None else stages
    out = output_dir(run, cfg)
    with build_system(run, cfg) as system:
        facts = system.facts()
        system.save_facts(facts)
        if cfg.signing.enabled:
            prepare_signing(run, cfg, system)
        ctx = StageContext(system, facts, FingerprintStore(out / "fingerprints.json"))
        try:
            for name in stages:
                if name not in off:
                    run.progress.say(f"{name}: ...")
                message = off.get(name) or RUNNERS[name](ctx)
                run.progress.say(f"{name}: {message}")
                run.report.summary[name] = message
        finally:
            run.report.warnings.extend(ctx.warnings)


def prepare_signing(run: JobRun, cfg: BinhostConfig, system: BuildSystem) -> None:
    """quickpkg verifies what it signs: the build system's verify keyring must trust our key."""
    key = signing.signing_key(system.target, cfg.signing.gpg_home, cfg.signing.key)
    if signing.ensure_trusted(system.target, cfg.signing.verify_home, key):
        run.progress.say(f"signing: {cfg.signing.verify_home} now trusts {key.fingerprint}")
    if not run.dry:
        signing.save(key, system.out_dir / signing.KEY_FILE)


def update_clients(run: JobRun, only: list[str] | None = None, mode: str | None = None) -> None:
    """``inv binhost.clients``: ``--mode`` checked before any instance is touched (the settings, before the job)."""
    if mode is not None and mode not in clients.MODES:
        raise ConfigError(f"--mode: {mode!r} is not one of {', '.join(clients.MODES)}")
    clients.update_clients(run, only, mode)


def serve(run: JobRun) -> None:
    cfg: BinhostConfig = run.section("binhost")
    serve_forever(run, cfg, saved_facts(run, cfg), output_dir(run, cfg) / "serve")


__all__ = ["STAGES", "STAGE_DOCS", "build", "serve", "update_clients"]
