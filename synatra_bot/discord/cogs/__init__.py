"""One cog per concern: roleplay, characters, personas, moderation."""
