"""synatra-bot: a Discord roleplay bot for Synatra-7B-v0.3-RP.

Its version lives in pyproject.toml only; `synatra-bot --version` reads it from the installed
package's metadata.
"""
