"""The terminal front end: roleplay with a character in a terminal, on the same core as the bot."""
