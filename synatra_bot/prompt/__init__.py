"""Prompt assembly: character cards, macros, lorebook, ChatML within the token budget."""
