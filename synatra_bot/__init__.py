"""synatra-bot: a Discord roleplay bot for Synatra-7B-v0.3-RP."""

__version__ = "0.1.0"
