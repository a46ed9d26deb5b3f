"""Discord adapter: the bot, cogs, webhooks, streaming edits, localisation."""
