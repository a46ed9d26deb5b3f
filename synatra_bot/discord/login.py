"""Whether the bot can log in to Discord: checked in seconds, before the model loads.

The check is the login's own first request (`GET /users/@me` with the token, through
discord.py's HTTP client). A refused token or an unreachable Discord is one line for the host,
in Korean and English, instead of a traceback after minutes of loading.
"""

from __future__ import annotations

import asyncio

import aiohttp
import discord
import discord.http

from synatra_bot.errors import DiscordUnusable

#: Seconds to wait for Discord's answer before saying it cannot be reached.
LOGIN_CHECK_TIMEOUT_S = 30.0

TOKEN_REFUSED = (
    "Discord가 DISCORD_TOKEN을 거부했습니다: 개발자 포털에서 토큰을 다시 발급하세요 · "
    "DISCORD_TOKEN was refused by Discord: reset it in the developer portal"
)
UNREACHABLE = (
    "Discord에 연결할 수 없습니다: 이 컴퓨터의 네트워크를 확인하세요 · "
    "Discord cannot be reached ({reason}): check this machine's network"
)


def login_error(error: BaseException) -> DiscordUnusable | None:
    """The host's error for a failure to log in to Discord, or None for any other error."""
    if isinstance(error, discord.LoginFailure):
        return DiscordUnusable(TOKEN_REFUSED)
    if isinstance(error, discord.HTTPException):
        reason = f"HTTP {error.status}"
    elif isinstance(error, TimeoutError):
        reason = "no answer in time"
    elif isinstance(error, aiohttp.ClientConnectionError | OSError):
        reason = str(error) or type(error).__name__
    else:
        return None
    return DiscordUnusable(UNREACHABLE.format(reason=reason))


async def check_login(token: str, *, timeout_s: float = LOGIN_CHECK_TIMEOUT_S) -> None:
    """Log in over REST once and close; raises DiscordUnusable when `token` cannot be used."""
    http = discord.http.HTTPClient(asyncio.get_running_loop())
    try:
        async with asyncio.timeout(timeout_s):
            await http.static_login(token)
    except Exception as error:
        unusable = login_error(error)
        if unusable is None:
            raise
        raise unusable from None
    finally:
        await http.close()
