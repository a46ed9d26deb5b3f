"""The event loop the bot runs on: uvloop where installed, asyncio's own on request."""

import asyncio

import pytest
import uvloop

from synatra_bot import eventloop, settings
from synatra_bot.errors import ConfigError
from synatra_bot.settings import settings_from_env


async def _loop_module() -> str:
    await asyncio.sleep(0)
    return eventloop.loop_name(asyncio.get_running_loop())


def test_auto_runs_on_uvloop_when_it_is_installed():
    assert eventloop.resolve("auto") == "uvloop"
    assert eventloop.run(_loop_module()) == "uvloop"
    assert eventloop.loop_factory("uvloop") is uvloop.new_event_loop


def test_asyncio_runs_on_the_standard_loop():
    assert eventloop.loop_factory("asyncio") is None
    assert eventloop.run(_loop_module(), kind="asyncio") == "asyncio"


def test_auto_falls_back_to_asyncio_without_uvloop(monkeypatch):
    monkeypatch.setattr(eventloop, "uvloop_available", lambda: False)
    assert eventloop.resolve("auto") == "asyncio"
    assert eventloop.run(_loop_module()) == "asyncio"


def test_event_loop_setting():
    assert settings_from_env({"DISCORD_TOKEN": "t"}).event_loop == "auto"
    assert settings_from_env({"DISCORD_TOKEN": "t", "EVENT_LOOP": "AsyncIO"}).event_loop == (
        "asyncio"
    )
    with pytest.raises(ConfigError) as info:
        settings_from_env({"DISCORD_TOKEN": "t", "EVENT_LOOP": "trio"})
    assert info.value.setting == "EVENT_LOOP"


def test_asking_for_uvloop_where_it_is_missing_names_the_setting(monkeypatch):
    monkeypatch.setattr(settings, "uvloop_available", lambda: False)
    with pytest.raises(ConfigError) as info:
        settings_from_env({"DISCORD_TOKEN": "t", "EVENT_LOOP": "uvloop"})
    assert info.value.setting == "EVENT_LOOP"
    assert "pip install uvloop" in str(info.value)
