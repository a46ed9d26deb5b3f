#!/bin/sh
# The container's command: with no arguments (or "run") apply the database's pending
# migrations and then run the bot; any other arguments are a synatra-bot command of their own
# (--version, db current, ...).
set -eu
if [ "$#" -eq 0 ] || [ "$1" = "run" ]; then
    synatra-bot db upgrade
fi
exec synatra-bot "$@"
