"""Roleplay core: sessions, turns, swipes, history sync and scheduling. Knows nothing of Discord."""
