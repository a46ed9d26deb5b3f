"""Effective channel configuration: channel over server over defaults, within the engine's limits."""

from synatra_bot.roleplay.config import Defaults, effective_config
from synatra_bot.storage.records import ChannelSettingsRecord, GuildSettingsRecord


def test_channel_settings_override_server_defaults_which_override_app_defaults():
    defaults = Defaults(temperature=0.8, top_k=40, max_context_size=8192)
    guild = GuildSettingsRecord(guild_id=1, temperature=0.6, top_k=20, nsfw_policy="off")
    channel = ChannelSettingsRecord(channel_id=2, guild_id=1, enabled=True, temperature=1.1)
    config = effective_config(defaults=defaults, guild=guild, channel=channel)
    assert config.sampling.temperature == 1.1
    assert config.sampling.top_k == 20
    assert config.nsfw_policy == "off"
    assert config.enabled


def test_no_channel_asks_for_more_context_than_the_engine_was_started_with():
    defaults = Defaults(max_context_size=4096)
    guild = GuildSettingsRecord(guild_id=1, context_size=32768, max_new_tokens=4000)
    config = effective_config(defaults=defaults, guild=guild, channel=None)
    assert config.context_size == 4096
    assert config.sampling.max_new_tokens == 2048
    assert not config.enabled


def test_lorebook_budget_follows_the_channel_then_the_server_within_the_context():
    defaults = Defaults(max_context_size=4096)
    unset = effective_config(defaults=defaults, guild=GuildSettingsRecord(guild_id=1), channel=None)
    assert unset.lorebook_budget is None  # the prompt builder's quarter of the budget
    assert ("lorebook_budget", "auto") in unset.as_rows()
    guild = GuildSettingsRecord(guild_id=1, lorebook_budget=300)
    channel = ChannelSettingsRecord(channel_id=2, guild_id=1)
    assert effective_config(defaults=defaults, guild=guild, channel=channel).lorebook_budget == 300
    own = ChannelSettingsRecord(channel_id=2, guild_id=1, lorebook_budget=0)
    assert effective_config(defaults=defaults, guild=guild, channel=own).lorebook_budget == 0
    huge = GuildSettingsRecord(guild_id=1, lorebook_budget=30000, context_size=2048)
    assert effective_config(defaults=defaults, guild=huge, channel=None).lorebook_budget == 2048
