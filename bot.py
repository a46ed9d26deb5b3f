"""Entry point: `python bot.py` runs the bot, exactly like `synatra-bot run`."""

from synatra_bot.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["run"]))
