"""gentoo-ec2-orchestrator: keep a small Gentoo fleet on EC2 healthy from one build box."""

__version__ = "0.1.0"
