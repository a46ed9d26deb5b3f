"""Loopback fake Discord (REST v10 + gateway) that the real discord.py client logs in to."""

from .server import ROUTES, ApiError, FakeDiscord, RateLimitConfig, Scenario
from .state import (
    ADMINISTRATOR,
    BOT_PERMISSIONS,
    EPHEMERAL_FLAG,
    EVERYONE_PERMISSIONS,
    MANAGE_GUILD,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    FakeWebhook,
    InteractionRecord,
    RestCall,
)

__all__ = [
    "ADMINISTRATOR",
    "BOT_PERMISSIONS",
    "EPHEMERAL_FLAG",
    "EVERYONE_PERMISSIONS",
    "MANAGE_GUILD",
    "ROUTES",
    "ApiError",
    "FakeAttachment",
    "FakeChannel",
    "FakeDiscord",
    "FakeGuild",
    "FakeMember",
    "FakeMessage",
    "FakeRole",
    "FakeUser",
    "FakeWebhook",
    "InteractionRecord",
    "RateLimitConfig",
    "RestCall",
    "Scenario",
]
