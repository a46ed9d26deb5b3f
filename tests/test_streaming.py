"""Reply views are freed as soon as they are sent, not by the cyclic garbage collector."""

import gc
import weakref

import discord

from synatra_bot.discord.replies import reply_view, streaming_view
from synatra_bot.discord.streaming import release_view


async def test_a_sent_reply_view_is_freed_without_the_garbage_collector():
    views = [reply_view(1234, index=1, count=3), streaming_view(7)]
    refs = [weakref.ref(view) for view in views]
    gc.disable()
    try:
        for view in views:
            view.to_components()
            release_view(view)
            assert view.children == []
        del view, views
        assert [ref() for ref in refs] == [None, None]
    finally:
        gc.enable()


async def test_an_unreleased_view_would_wait_for_the_collector():
    """The reason for `release_view`: a view and its items point at each other."""
    view = reply_view(1234)
    ref = weakref.ref(view)
    gc.disable()
    try:
        del view
        assert ref() is not None
    finally:
        gc.enable()
    gc.collect()
    assert ref() is None


async def test_a_view_with_an_ordinary_button_keeps_its_items():
    """discord.py dispatches a press on an ordinary button through the view it was sent with."""
    view = discord.ui.View(timeout=None)
    view.add_item(discord.ui.Button(label="다시", custom_id="plain:regen"))
    release_view(view)
    assert [item.custom_id for item in view.children] == ["plain:regen"]  # type: ignore[attr-defined]
